"""Why the AVX2 sparse kernel stops where it does: the cost of its slots on this core.

    python -m benchmarks.slot_cost run --results docs/results/export_avx2     # measure, write slot_cost.json
    python -m benchmarks.slot_cost table --results docs/results/export_avx2   # the docs table, from the raw files

actor.c's AVX2 branch runs a sparse layer as ELL slots. A slot multiply-adds one register of weights
into 8 outputs, its lanes gathered by index (`_mm256_permutevar8x32_ps`, vpermps) from one register
of 8 inputs, or from 2-4 of them merged by blends where lanes of different input groups share the
slot. It is straight-line code: each slot runs once per call.

`run` times instruction mixes on this core with benchmarks/slot_cost.c, compiled with the kernels'
flags: a multiply-add alone, a gather alone, a slot of 1, 2, 3 or 4 gathers as the kernel compiles
it, a slot followed by two plain multiply-adds (which shows whether those hide behind the slot), and
a slot on AVX2's hardware gather instead (vgatherdps: 8 inputs from anywhere, so no groups), each
the best of `--rounds` runs. It counts the slots of each kind in each committed actor's
generated AVX2 branch, and the multiply-adds outside them. `table` sets what those take at the
probe's rates (tables in the L1 cache, no waiting on results: a floor, not a prediction) beside the
measured latency (the export benchmark's raw file in the same folder) and the latency the host goal
asks for: the fastest dense kernel's over half the ideal ratio. AVX2 hosts only (an AVX-512 host
compiles the other branch).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.export_docs import committed_actors, results_in
from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.export.bench import cpu_model
from tinypolicy.export.c_codegen import HOST_CFLAGS, host_branch, host_compiler, write_c_sources
from tinypolicy.export.mlp import policy_from_actor
from tinypolicy.export.prune import remove_dead_neurons
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.ondevice.errors import UserError

PROBE = Path(__file__).with_name("slot_cost.c")
RESULT = "slot_cost.json"
GATHER = "_mm256_permutevar8x32_ps("
FMA = "_mm256_fmadd_ps("
LOOP = re.compile(r"for \(j = 0; j < (\d+); \+\+j\) \{")
BRANCH = "#elif defined(__AVX2__)"
MAX_GATHERS = 4  # a slot's gathers, as the probe times them


def avx2_branch(source: str) -> str:
    """The lines of actor.c's AVX2 branch: from its `#elif` to the `#else`/`#endif` at its own depth."""
    lines = source.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(BRANCH)), None)
    if start is None:
        raise ValueError("actor.c has no AVX2 branch")
    depth = 0
    for end in range(start + 1, len(lines)):
        directive = lines[end].lstrip()
        if directive.startswith("#if"):
            depth += 1
        elif directive.startswith("#endif"):
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and directive.startswith(("#else", "#elif")):
            break
    return "\n".join(lines[start + 1:end])


def slot_kinds(branch: str) -> list[int]:
    """Slots of 1, 2, ... MAX_GATHERS gathers in a vector branch: one statement each."""
    counts = [line.count(GATHER) for line in branch.splitlines() if GATHER in line]
    if max(counts, default=0) > MAX_GATHERS:
        raise ValueError(f"a slot of {max(counts)} gathers; the probe times up to {MAX_GATHERS}")
    return [counts.count(k) for k in range(1, MAX_GATHERS + 1)]


def other_multiply_adds(branch: str) -> int:
    """Multiply-adds per call outside the slots (dense layers and inputs, dot rows, the action head,
    tanh): each counted as often as its enclosing `for (j = 0; j < N; ++j)` loops run."""
    total, depth, loops = 0, 0, []  # loops: (depth inside the loop, trips)
    for line in branch.splitlines():
        trips = LOOP.search(line)
        if GATHER not in line:
            total += line.count(FMA) * int(np.prod([n for _, n in loops]))
        depth += line.count("{") - line.count("}")
        if trips:
            loops.append((depth, int(trips[1])))
        while loops and depth < loops[-1][0]:
            loops.pop()
    return total


def count(actor: Path, work: Path) -> dict:
    """The slots by gathers and the other multiply-adds of the AVX2 branch of the actor.c generated
    for the committed `actor`."""
    dense = policy_from_actor(load_checkpoint(actor).build_actor())
    write_c_sources(remove_dead_neurons(dense).policy, work, dense=dense)
    branch = avx2_branch((work / "actor.c").read_text())
    return {"slots_by_gathers": slot_kinds(branch), "other_multiply_adds": other_multiply_adds(branch)}


def probe(work: Path, rounds: int) -> dict[str, float | list[float]]:
    """The probe's timings (ns), each the fastest of `rounds` runs: other work on the core only adds time."""
    binary = work / "slot_cost"
    subprocess.run([host_compiler(), *HOST_CFLAGS, str(PROBE), "-o", str(binary)], check=True, capture_output=True)
    runs = [json.loads(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout)
            for _ in range(rounds)]
    fastest = {key: min(r[key] for r in runs) for key in runs[0] if key != "slot_ns"}
    return {**fastest, "slot_ns": [min(r["slot_ns"][k] for r in runs) for k in range(MAX_GATHERS)]}


def run(results: Path, rounds: int) -> dict:
    if host_branch() != "AVX2":
        raise UserError(f"this host compiles actor.c's {host_branch()} branch; slot_cost measures the AVX2 one")
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        counts = {name: count(path, Path(tmp) / name) for name, path in committed_actors().items()}
        timings = probe(Path(tmp), rounds)
    record = {"format": "tinypolicy.slot_cost", "version": 1,
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpu": cpu_model(), "c_flags": " ".join(HOST_CFLAGS), "rounds": rounds},
              "probe_ns": timings, "actors": counts}
    write_json(results / RESULT, record)
    return record


def table(results: Path) -> str:
    record = json.loads((results / RESULT).read_text())
    probe_ns = record["probe_ns"]
    slot_ns = probe_ns["slot_ns"]
    probe_line = (f"Probe (best of {record['machine']['rounds']} runs, {record['date_utc'][:10]}): a multiply-add "
                  f"{probe_ns['fma_ns']:.2f} ns, a gather {probe_ns['permute_ns']:.2f} ns; a slot of 1 / 2 / 3 / 4 "
                  f"gathers {' / '.join(f'{t:.2f}' for t in slot_ns)} ns; a slot of 1 gather and 2 multiply-adds "
                  f"{probe_ns['slot_and_2_fma_ns']:.2f} ns; a slot on the hardware gather (vgatherdps) "
                  f"{probe_ns['hardware_gather_slot_ns']:.2f} ns (issue rates of independent instructions).")
    header = ("| actor | slots of 1 / 2 / 3 / 4 gathers | other multiply-adds | at the probe's rates (us): slots "
              "+ others | measured latency (us, chained) | goal latency (us): fastest dense / half of ideal "
              "| issue time / goal |")
    lines = [probe_line, "", header, "|---|---:|---:|---:|---:|---:|---:|"]
    benches = results_in(results)
    for name, counts in record["actors"].items():
        if name not in benches:
            continue
        _, bench, _ = benches[name]
        chained = bench["speedup"]["c_chained_mean"]
        goal = bench["latency"][chained["fastest_dense"]]["chained_mean_us"] / (chained["ideal"] / 2)
        slots = sum(n * t for n, t in zip(counts["slots_by_gathers"], slot_ns)) / 1000
        others = counts["other_multiply_adds"] * probe_ns["fma_ns"] / 1000
        lines.append(f"| {name} | {' / '.join(f'{n:,}' for n in counts['slots_by_gathers'])} | "
                     f"{counts['other_multiply_adds']:,} | {slots:.2f} + {others:.2f} = {slots + others:.2f} | "
                     f"{bench['latency']['c_sparse']['chained_mean_us']:.2f} | {goal:.2f} | "
                     f"{(slots + others) / goal:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help=f"time the probe, count the slots, write RESULTS/{RESULT}")
    p_run.add_argument("--results", type=Path, required=True)
    p_run.add_argument("--rounds", type=int, default=15)
    p_table = sub.add_parser("table", help=f"the docs table from RESULTS/{RESULT} and the export benchmark there")
    p_table.add_argument("--results", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run(args.results, args.rounds)
        print(table(args.results))
    except (UserError, FileNotFoundError) as exc:
        parser.exit(2, f"slot_cost: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
