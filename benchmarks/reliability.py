"""Reliability: the bad-input cases per command, and `train`'s throughput beside a busy process.

1. Bad input: the cases of tests/bad_input_cases.py (the table tests/test_bad_input.py runs),
   counted per command.
2. Training under load: a robot's computer is never idle, and on a 2-core machine a
   2-thread run beside one other busy process was seen to fall from about 240 to 10-20 env
   steps/s. Here Hopper-v5 TD3 RLx2 (the `compress` presets' method) trains with 1 and with 2
   torch threads, each alone and beside one competing busy process (`python -c "while True:
   pass"`, started for those chunks only and stopped after). Each trainer is built once and
   warmed up (`--warmup` random steps, then 50 with updates); then all four conditions run
   in interleaved chunks of `--chunk` env steps (the order alternating every round) until
   each has done `--steps`, so a slow spell of this shared VM falls on all of them alike.
   Speeds are total steps over total time, and the median of the chunks' speeds; the ratio
   busy / alone (of the medians, which a burst of some other process during one chunk does
   not dominate; of the totals too) says how gracefully a thread setting degrades. On a
   shared machine each chunk first waits (`--patience` at most) until other processes use
   under `--quiet` cores, and the CPU they used during each condition's chunks is
   reported, in cores: what made "alone" less than alone.

    python -m benchmarks.reliability --steps 2000 --out docs/results/reliability.json

`table` prints the bad-input cases per command as docs/BENCHMARKS.md's two-column table:
counted from tests/bad_input_cases.py, or as a written RESULTS.json recorded them:

    python -m benchmarks.reliability table [RESULTS.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from tests.bad_input_cases import CASES
from tinypolicy.export.bench import cpu_model
from tinypolicy.ondevice.artefact import write_json
from tinypolicy.pipeline.train import TrainConfig, Trainer

TICK = os.sysconf("SC_CLK_TCK")
LOADS = ("alone", "busy")


def bad_input_counts() -> dict:
    by_command = Counter(case.command for case in CASES)
    return {"total": len(CASES), "integration": sum(case.slow for case in CASES),
            "by_command": dict(sorted(by_command.items()))}


def counts_table(by_command: dict[str, int]) -> str:
    """The cases per command, most first (ties by name), in two side-by-side column pairs:
    the first half of the commands on the left, the rest on the right."""
    ordered = sorted(by_command.items(), key=lambda item: (-item[1], item[0]))
    half = (len(ordered) + 1) // 2
    left, right = ordered[:half], ordered[half:] + [("", "")] * (2 * half - len(ordered))
    lines = ["| command | cases | | command | cases |", "|---|---:|---|---|---:|"]
    for (command, n), (other, m) in zip(left, right):
        lines.append("|" + "|".join(f" {cell} " if cell != "" else " " for cell in (command, n, "", other, m)) + "|")
    return "\n".join(lines) + "\n"


def table_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability table",
                                     description="Print the bad-input cases per command as a table.")
    parser.add_argument("results", nargs="?", type=Path, default=None,
                        help="a written results file (default: count tests/bad_input_cases.py now)")
    args = parser.parse_args(argv)
    counts = bad_input_counts()
    if args.results is not None:
        try:
            counts = json.loads(args.results.read_text())["bad_input_cases"]
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"{args.results}: {exc!r}")
    sys.stdout.write(counts_table(counts["by_command"]))
    return 0


def trainer_runner(env_id: str, threads: int, warmup: int, seed: int) -> Callable[[int], None]:
    """A warmed-up RLx2 TD3 trainer; calling it runs that many env steps (one update each)."""
    cfg = TrainConfig(env_id=env_id, algo="td3", method="rlx2", total_steps=300_000, learning_starts=warmup,
                      nstep_start=0, threads=threads, seed=seed)
    trainer = Trainer(cfg, Path("."))  # writes nothing: the run never checkpoints
    trainer.reset_env()

    def run(steps: int) -> None:
        for _ in range(steps):
            trainer.env_step()

    run(warmup + 50)
    return run


def machine_busy_seconds() -> float:
    """CPU seconds all processes have spent since boot, summed over cores (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


class Competitor:
    """One other busy process for the duration of a `with` block."""

    def __enter__(self) -> Competitor:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)  # past its interpreter start-up, spinning
        return self

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


def other_cores(seconds: float, competitor: Competitor | None) -> float:
    """Cores that processes other than this one and the competitor keep busy, over `seconds`."""
    busy, own = machine_busy_seconds(), time.process_time()
    theirs = competitor.cpu_seconds() if competitor else 0.0
    start = time.perf_counter()
    time.sleep(seconds)
    theirs = (competitor.cpu_seconds() - theirs) if competitor else 0.0
    others = machine_busy_seconds() - busy - (time.process_time() - own) - theirs
    return max(0.0, others) / (time.perf_counter() - start)


def wait_for_quiet(threshold: float, patience: float, competitor: Competitor | None) -> float:
    """Wait (at most `patience` seconds) until other processes use under `threshold` cores;
    returns the seconds waited. On a shared machine "alone" is only as alone as this makes it."""
    waited = 0.0
    while waited < patience and other_cores(0.5, competitor) >= threshold:
        waited += 0.5
    return waited


def timed_chunk(run: Callable[[int], None], threads: int, steps: int, competitor: Competitor | None) -> dict:
    torch.set_num_threads(threads)  # process-wide; each trainer has its own setting
    busy, own = machine_busy_seconds(), time.process_time()
    theirs = competitor.cpu_seconds() if competitor else 0.0
    start = time.perf_counter()
    run(steps)
    wall = time.perf_counter() - start
    theirs = (competitor.cpu_seconds() - theirs) if competitor else 0.0
    others = machine_busy_seconds() - busy - (time.process_time() - own) - theirs
    return {"wall": wall, "steps": steps, "other_cores": max(0.0, others) / wall}


def measure(env_id: str, thread_counts: list[int], steps: int, chunk: int, warmup: int, seed: int,
            quiet: float, patience: float) -> list[dict]:
    runners = {threads: trainer_runner(env_id, threads, warmup, seed) for threads in thread_counts}
    chunks: dict[tuple[int, str], list[dict]] = {(t, load): [] for t in thread_counts for load in LOADS}
    for round_ in range(steps // chunk):
        for load in LOADS if round_ % 2 == 0 else LOADS[::-1]:
            order = thread_counts if round_ % 2 == 0 else thread_counts[::-1]
            with Competitor() if load == "busy" else contextlib.nullcontext() as competitor:
                for threads in order:
                    waited = wait_for_quiet(quiet, patience, competitor)
                    chunks[threads, load].append(timed_chunk(runners[threads], threads, chunk, competitor)
                                                 | {"waited": waited})
        print(f"round {round_ + 1}/{steps // chunk}: " + ", ".join(
            f"{t} thread(s) {load} {c[-1]['steps'] / c[-1]['wall']:.0f}/s" for (t, load), c in chunks.items()),
            flush=True)
    rows = []
    for (threads, load), done in chunks.items():
        rates = [c["steps"] / c["wall"] for c in done]
        wall = sum(c["wall"] for c in done)
        rows.append({"threads": threads, "load": load, "steps": sum(c["steps"] for c in done),
                     "steps_per_s": sum(c["steps"] for c in done) / wall, "chunk_min": min(rates),
                     "chunk_max": max(rates), "chunk_median": statistics.median(rates),
                     "other_processes_cores": sum(c["other_cores"] * c["wall"] for c in done) / wall,
                     "waited_for_quiet_s": round(sum(c["waited"] for c in done), 1),
                     "chunks_steps_per_s": [round(r, 1) for r in rates]})
    return rows


def ratios(rows: list[dict], key: str) -> dict[str, float]:
    speed = {(r["threads"], r["load"]): r[key] for r in rows}
    threads = sorted({t for t, _ in speed})
    result = {f"busy_over_alone_threads_{t}": speed[t, "busy"] / speed[t, "alone"] for t in threads}
    for t in threads[1:]:
        for load in LOADS:
            result[f"{load}_threads_{t}_over_threads_{threads[0]}"] = speed[t, load] / speed[threads[0], load]
    return result


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["table"]:
        return table_main(words[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--steps", type=int, default=3000, help="timed env steps per thread count and load")
    parser.add_argument("--chunk", type=int, default=250, help="env steps per turn of the round-robin")
    parser.add_argument("--warmup", type=int, default=2500, help="random env steps before the first update")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", type=float, default=0.25,
                        help="before each chunk, wait until other processes use fewer cores than this ...")
    parser.add_argument("--patience", type=float, default=60.0, help="... but at most this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.chunk <= 0 or args.steps < args.chunk:
        parser.error("--steps must be at least --chunk, and --chunk positive")
    thread_counts = [int(t) for t in args.threads.split(",")]

    counts = bad_input_counts()
    print(f"bad-input cases: {counts['total']} ({counts['integration']} marked integration)")
    for command, n in counts["by_command"].items():
        print(f"  {command:12} {n}")

    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = measure(args.env, thread_counts, args.steps, args.chunk, args.warmup, args.seed, args.quiet, args.patience)
    # Chunk medians: a burst of another process during one chunk (which the quiet wait cannot
    # foresee) would otherwise dominate the total time of the condition it hits.
    result_ratios = {"of_chunk_medians": ratios(rows, "chunk_median"), "of_totals": ratios(rows, "steps_per_s")}
    print(f"\n{cpu_model()}, {len(os.sched_getaffinity(0))} cores: {args.env} TD3 RLx2, {args.steps} timed env steps "
          f"per row after {args.warmup} warm-up, interleaved in chunks of {args.chunk}")
    print(f"{'threads':>7} {'load':6} {'env steps/s':>12} {'chunk median':>13} {'chunk range':>12} "
          f"{'other processes':>16}")
    for r in rows:
        print(f"{r['threads']:7d} {r['load']:6} {r['steps_per_s']:12.1f} {r['chunk_median']:13.1f} "
              f"{r['chunk_min']:5.0f}-{r['chunk_max']:<6.0f} {r['other_processes_cores']:10.2f} cores")
    for name, value in result_ratios["of_chunk_medians"].items():
        print(f"{name}: {value:.2f} (of totals {result_ratios['of_totals'][name]:.2f})")

    if args.out:
        write_json(args.out, {
            "command": "python -m benchmarks.reliability " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "bad_input_cases": counts,
            "train": {"env": args.env, "algo": "td3", "method": "rlx2", "precision": "fp32", "seeds": [args.seed],
                      "warmup": args.warmup, "steps": args.steps, "chunk": args.chunk,
                      "competitor": f"{Path(sys.executable).name} -c 'while True: pass'",
                      "quiet_cores": args.quiet, "patience_s": args.patience,
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                      "seconds": round(time.perf_counter() - started, 1), "rows": rows, "ratios": result_ratios}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
