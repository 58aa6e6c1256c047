"""`tinypolicy compress`: run the pipeline's stages in order, each one resumable.

Every stage writes its artefacts into its own folder under the output directory and,
when it finishes, a `stamp.json` with the hash of its parameters and of every input and
output file. Re-running skips a stage whose stamp still matches, reruns a stage whose
parameters or inputs changed (its folder is cleared first), and resumes an interrupted
stage (training picks up its last checkpoint). Stages available now: train -> evaluate
-> report; distillation, retraining, export and benchmarks slot in as they land.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.train import TrainConfig, train

STAMP = "stamp.json"


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


@dataclass
class Stage:
    name: str
    params: dict
    inputs: list[Path]            # files of earlier stages this stage reads
    outputs: list[str]            # files (relative to the stage folder) it must produce
    run: Callable[[Path], dict]   # writes the outputs into the folder, returns a summary

    def folder(self, out: Path) -> Path:
        return out / self.name

    def expected_stamp(self) -> dict:
        return {"params": params_hash(self.params), "inputs": {str(p): file_hash(p) for p in self.inputs}}

    def _stamp(self, out: Path) -> dict | None:
        """The folder's stamp; an unreadable one reads as empty (never trusted)."""
        path = self.folder(out) / STAMP
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}

    def _matches(self, stamp: dict) -> bool:
        return {k: stamp.get(k) for k in ("params", "inputs")} == self.expected_stamp()

    def is_done(self, out: Path) -> bool:
        stamp = self._stamp(out)
        if not stamp or not self._matches(stamp):
            return False
        outputs = stamp.get("outputs", {})
        return all((self.folder(out) / name).exists() and file_hash(self.folder(out) / name) == outputs.get(name)
                   for name in self.outputs)

    def params_changed(self, out: Path) -> bool:
        """True when the folder holds work done with other parameters or inputs."""
        stamp = self._stamp(out)
        return stamp is not None and not self._matches(stamp)


def random_policy_return(env_id: str, episodes: int, seed: int) -> np.ndarray:
    from pipeline.envs import evaluate_policy, make_env

    space = make_env(env_id, seed=seed).action_space
    return evaluate_policy(lambda obs: space.sample(), env_id, episodes, seed)


def build_stages(cfg: TrainConfig, out: Path, eval_episodes: int, progress: bool) -> list[Stage]:
    train_dir = out / "train"

    def run_train(folder: Path) -> dict:
        return train(cfg, folder, progress=progress)

    def run_evaluate(folder: Path) -> dict:
        from pipeline.checkpoint import load_checkpoint
        from pipeline.envs import actor_policy, evaluate_policy

        actor = load_checkpoint(train_dir / "checkpoint.pt").build_actor()
        seed = 10_000  # episodes never seen during training's evaluations
        returns = evaluate_policy(actor_policy(actor), cfg.env_id, eval_episodes, seed)
        random = random_policy_return(cfg.env_id, eval_episodes, seed)
        summary = {"env_id": cfg.env_id, "episodes": eval_episodes, "seed": seed,
                   "mean_return": float(returns.mean()), "std_return": float(returns.std()),
                   "random_mean_return": float(random.mean()), "random_std_return": float(random.std())}
        write_json(folder / "eval.json", summary)
        return summary

    def run_report(folder: Path) -> dict:
        from pipeline.report import write_report

        write_report(out, folder)
        return {"report": str(folder / "report.md")}

    return [
        Stage("train", asdict(cfg) | {"hidden": list(cfg.hidden)}, [], ["checkpoint.pt", "metrics.csv", "eval.json"],
              run_train),
        Stage("evaluate", {"episodes": eval_episodes}, [train_dir / "checkpoint.pt"], ["eval.json"], run_evaluate),
        Stage("report", {}, [train_dir / "checkpoint.pt", train_dir / "metrics.csv", out / "evaluate" / "eval.json"],
              ["report.md", "report.html", "learning_curve.png"], run_report),
    ]


def compress(cfg: TrainConfig, out: Path, eval_episodes: int = 10, progress: bool = True) -> list[dict]:
    """Run (or resume) every stage; returns one record per stage for the summary table."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    stages = build_stages(cfg, out, eval_episodes, progress)
    for index, stage in enumerate(stages, 1):
        folder = stage.folder(out)
        header = f"[{index}/{len(stages)}] {stage.name}"
        if stage.is_done(out):
            summary = json.loads((folder / STAMP).read_text())["summary"]
            records.append({"stage": stage.name, "status": "up to date", "seconds": 0.0, "summary": summary})
            print(f"{header}: up to date", flush=True)
            continue
        if stage.params_changed(out):
            print(f"{header}: parameters or inputs changed, rerunning", flush=True)
            shutil.rmtree(folder)
        else:
            print(f"{header}: running" + (" (resuming)" if folder.exists() else ""), flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        summary = stage.run(folder)
        missing = [name for name in stage.outputs if not (folder / name).exists()]
        if missing:
            raise UserError(f"stage {stage.name} did not write {', '.join(missing)}")
        stamp = stage.expected_stamp() | {
            "outputs": {name: file_hash(folder / name) for name in stage.outputs},
            "summary": summary, "seconds": time.perf_counter() - started}
        write_json(folder / STAMP, stamp)
        records.append({"stage": stage.name, "status": "done", "seconds": stamp["seconds"], "summary": summary})
    return records
