"""Why the AVX2 sparse kernel stops where it does: the cost of its slots on this core.

    python -m benchmarks.slot_cost run --results docs/results/export_avx2     # measure, write slot_cost.json
    python -m benchmarks.slot_cost table --results docs/results/export_avx2   # the docs table, from the raw files

actor.c's AVX2 branch runs a sparse layer as ELL slots: each gathers 8 inputs from one register by
index (`_mm256_permutevar8x32_ps`, vpermps) and multiply-adds them into 8 outputs, so each gather
feeds one multiply-add, straight-line code that runs once per call. `run` times the instruction
mix on this core (benchmarks/slot_cost.c, compiled with the kernels' flags: a multiply-add alone,
a gather alone, and a gather feeding a multiply-add) and counts the gathers in each committed
actor's generated AVX2 branch. `table` sets gathers x the pair's time (what the gathers alone
cost, if nothing else ran) beside the measured latency (from the export benchmark's raw file in
the same folder) and the latency the host goal asks for (the fastest dense kernel's over half the
ideal ratio): where the first is already above the last, no arrangement of these slots meets the
goal. AVX2 hosts only (an AVX-512 host compiles the other branch).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.export_docs import committed_actors, results_in
from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.export.c_codegen import HOST_CFLAGS, host_branch, host_compiler, write_c_sources
from tinypolicy.export.mlp import policy_from_actor
from tinypolicy.export.prune import remove_dead_neurons
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.ondevice.errors import UserError

PROBE = Path(__file__).with_name("slot_cost.c")
RESULT = "slot_cost.json"
GATHER = "_mm256_permutevar8x32_ps("
BRANCH = "#elif defined(__AVX2__)"


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


def gathers(actor: Path, work: Path) -> int:
    """Gathers per call in the AVX2 branch of the actor.c generated for the committed `actor`."""
    dense = policy_from_actor(load_checkpoint(actor).build_actor())
    write_c_sources(remove_dead_neurons(dense).policy, work, dense=dense)
    return avx2_branch((work / "actor.c").read_text()).count(GATHER)


def probe(work: Path, rounds: int) -> dict[str, float]:
    """The probe's timings, the median of `rounds` runs (ns)."""
    binary = work / "slot_cost"
    subprocess.run([host_compiler(), *HOST_CFLAGS, str(PROBE), "-o", str(binary)], check=True, capture_output=True)
    runs = [json.loads(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout)
            for _ in range(rounds)]
    return {key: sorted(r[key] for r in runs)[rounds // 2] for key in runs[0]}


def run(results: Path, rounds: int) -> dict:
    if host_branch() != "AVX2":
        raise UserError(f"this host compiles actor.c's {host_branch()} branch; slot_cost measures the AVX2 one")
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        counts = {name: gathers(path, Path(tmp) / name) for name, path in committed_actors().items()}
        timings = probe(Path(tmp), rounds)
    record = {"format": "tinypolicy.slot_cost", "version": 1, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpu": platform.processor() or platform.machine(), "c_flags": " ".join(HOST_CFLAGS),
                          "rounds": rounds},
              "probe_ns": timings, "gathers_per_call": counts}
    write_json(results / RESULT, record)
    return record


def table(results: Path) -> str:
    record = json.loads((results / RESULT).read_text())
    probe_ns = record["probe_ns"]
    pair = probe_ns["permute_fma_pair_ns"]
    probe_line = (f"Probe (median of {record['machine']['rounds']} runs, {record['date_utc'][:10]}): a multiply-add "
                  f"{probe_ns['fma_ns']:.2f} ns, a gather {probe_ns['permute_ns']:.2f} ns, a gather feeding a "
                  f"multiply-add {pair:.2f} ns (each the issue rate of independent instructions).")
    header = ("| actor | gathers per call | gathers x pair (us) | measured latency (us, chained) "
              "| goal latency (us): fastest dense / half of ideal | gathers the goal allows |")
    lines = [probe_line, "", header, "|---|---:|---:|---:|---:|---:|"]
    benches = results_in(results)
    for name, count in record["gathers_per_call"].items():
        if name not in benches:
            continue
        _, bench, _ = benches[name]
        chained = bench["speedup"]["c_chained_mean"]
        dense = bench["latency"][chained["fastest_dense"]]["chained_mean_us"]
        goal = dense / (chained["ideal"] / 2)
        lines.append(f"| {name} | {count:,} | {count * pair / 1000:.2f} | "
                     f"{bench['latency']['c_sparse']['chained_mean_us']:.2f} | {goal:.2f} | {int(goal * 1000 / pair):,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help=f"time the probe, count the gathers, write RESULTS/{RESULT}")
    p_run.add_argument("--results", type=Path, required=True)
    p_run.add_argument("--rounds", type=int, default=9)
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
