"""`tinypolicy compress`: run the pipeline's stages in order, each one resumable.

    train -> evaluate -> export -> bench -> embedded -> distill -> retrain -> report

Every stage writes its artefacts into its own folder under the output directory and,
when it finishes, a `stamp.json` with the hash of its parameters and of every input and
output file. Re-running skips a stage whose stamp still matches, reruns a stage whose
parameters or inputs changed (its folder is cleared first), and resumes an interrupted
stage (training and distillation pick up their last checkpoint). A kill at any moment
loses nothing that a finished stage wrote.

Each stage's settings are one dataclass (pipeline/settings.py, export/settings.py) whose
defaults a preset (pipeline/presets.toml, one table per stage) and `overrides` (`--set
stage.key=value` on the command line) change; both are checked against the dataclass
before any stage runs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.config import from_dict
from tinypolicy.envs import actor_policy, evaluate_policy, random_policy_returns
from tinypolicy.export.bench import bench_bundle
from tinypolicy.export.bundle import export_bundle
from tinypolicy.export.embedded import embedded_report, missing_tools, write_embedded_json
from tinypolicy.export.runtimes import ort_actions, ort_session
from tinypolicy.export.settings import BenchConfig, EmbeddedConfig, ExportConfig
from tinypolicy.ondevice.artefact import sha256_file, write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.retrain import retrain
from tinypolicy.pipeline.distill import distill
from tinypolicy.pipeline.report import write_report
from tinypolicy.pipeline.settings import DistillConfig, EvaluateConfig, ReportConfig, RetrainConfig, TrainConfig
from tinypolicy.pipeline.train import train

STAMP = "stamp.json"
STAGE_CONFIGS = {"train": TrainConfig, "evaluate": EvaluateConfig, "export": ExportConfig, "bench": BenchConfig,
                 "embedded": EmbeddedConfig, "distill": DistillConfig, "retrain": RetrainConfig,
                 "report": ReportConfig}
STAGES = tuple(STAGE_CONFIGS)  # in the order they run
# compress distils from the expert it has just trained; `tinypolicy distill` starts from zeros, as the paper does.
PIPELINE_DEFAULTS = {"distill": {"init": "expert"}}


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


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
        return {"params": params_hash(self.params), "inputs": {str(p): sha256_file(p) for p in self.inputs}}

    def stamp(self, out: Path) -> dict | None:
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
        stamp = self.stamp(out)
        if not stamp or not self._matches(stamp):
            return False
        outputs = stamp.get("outputs", {})
        return all((self.folder(out) / name).exists() and sha256_file(self.folder(out) / name) == outputs.get(name)
                   for name in self.outputs)

    def params_changed(self, out: Path) -> bool:
        """True when the folder holds work done with other parameters or inputs."""
        stamp = self.stamp(out)
        return stamp is not None and not self._matches(stamp)


@dataclass
class PipelineConfig:
    """Everything `compress` needs: the env and, per stage, the settings that the preset and
    the overrides give (the others keep their dataclass's defaults)."""
    env_id: str
    stages: dict[str, dict]

    @classmethod
    def from_preset(cls, env_id: str, preset: dict, overrides: dict[str, dict] | None = None) -> "PipelineConfig":
        overrides = overrides or {}
        for source, tables in (("preset", preset), ("--set overrides", overrides)):
            unknown = sorted(set(tables) - set(STAGES))
            if unknown:
                raise UserError(f"unknown stages {unknown} in the {source}; stages are {', '.join(STAGES)}")
            if not all(isinstance(table, dict) for table in tables.values()):
                raise UserError(f"the {source} must hold one table per stage")
        config = cls(env_id, {name: PIPELINE_DEFAULTS.get(name, {}) | preset.get(name, {}) | overrides.get(name, {})
                              for name in STAGES})
        config.train_config()  # fail early, before any work, on a bad key or value of any stage
        config.distill_config(Path("checkpoint.pt"))
        for name in STAGES:
            if name not in ("train", "distill"):
                config.settings(name)
        return config

    def settings(self, stage: str, **fixed):
        """`stage`'s config; `fixed` are values compress sets itself (the env, the expert), which
        neither the preset nor the overrides may."""
        return from_dict(STAGE_CONFIGS[stage], self.stages[stage], f"stage {stage}", fixed=fixed)

    def train_config(self) -> TrainConfig:
        cfg = self.settings("train", env_id=self.env_id)
        cfg.validate()
        return cfg

    def distill_config(self, expert: Path) -> DistillConfig:
        from_expert = self.stages["distill"].get("init") == "expert"
        return self.settings("distill", env_id=self.env_id, **({"expert": str(expert)} if from_expert else {}))


def build_stages(config: PipelineConfig, out: Path, progress: bool) -> list[Stage]:
    checkpoint = out / "train" / "checkpoint.pt"
    bundle = out / "export"
    dataset = out / "distill"
    train_cfg, distill_cfg = config.train_config(), config.distill_config(checkpoint)
    evaluate_cfg, export_cfg, bench_cfg, embedded_cfg, retrain_cfg = (
        config.settings(name) for name in ("evaluate", "export", "bench", "embedded", "retrain"))

    def run_train(folder: Path) -> dict:
        return train(train_cfg, folder, progress=progress)

    def run_evaluate(folder: Path) -> dict:
        actor = load_checkpoint(checkpoint).build_actor()
        episodes, seed = evaluate_cfg.episodes, evaluate_cfg.seed
        returns = evaluate_policy(actor_policy(actor), config.env_id, episodes, seed)
        random = random_policy_returns(config.env_id, episodes, seed)
        summary = {"env_id": config.env_id, "episodes": episodes, "seed": seed,
                   "mean_return": float(returns.mean()), "std_return": float(returns.std()),
                   "random_mean_return": float(random.mean()), "random_std_return": float(random.std())}
        write_json(folder / "eval.json", summary)
        return summary

    def run_export(folder: Path) -> dict:
        manifest = export_bundle(checkpoint, folder, progress=progress, **asdict(export_cfg))
        return {"widths": manifest["widths"], "macs": manifest["macs"],
                "parity_within_1e-5": manifest["parity"]["within_tolerance"]}

    def run_bench(folder: Path) -> dict:
        result = bench_bundle(bundle, folder, progress=progress, **asdict(bench_cfg))
        return {"latency_p50_us": {name: v["p50_us"] for name, v in result["latency"].items()},
                "speedup": result["speedup"]}

    def run_embedded(folder: Path) -> dict:
        reports, skipped = [], {}
        for target in embedded_cfg.targets:
            missing = missing_tools(target)
            if missing:
                skipped[target] = f"not installed: {', '.join(missing)} (make embedded-deps)"
                continue
            reports.append(embedded_report(bundle, target, progress=progress))
        write_embedded_json(folder, reports)
        summary = {"targets": [r["target"] for r in reports], "skipped": skipped}
        for r in reports:
            summary[r["target"]] = {name: {"flash_bytes": k.get("flash_bytes"), "fits": k["fits"]}
                                    for name, k in r["kernels"].items()}
        return summary

    def run_distill(folder: Path) -> dict:
        return distill(distill_cfg, folder, progress=progress)

    def run_retrain(folder: Path) -> dict:
        # A HaDES-F dataset is evolved for one policy init, which distill ships beside it; the
        # sparse topology of the exported actor needs a fresh (masked) init.
        fixed_init = dataset / "policy_init.npz"
        summary = {}
        for name, mask in (("dense", None), ("sparse", bundle / "actor.onnx")):
            init = fixed_init if mask is None and fixed_init.exists() else None
            result = retrain(dataset, folder / f"policy.{name}.onnx", mask_path=mask, init_path=init,
                             seed=retrain_cfg.seed)
            session = ort_session(folder / f"policy.{name}.onnx")
            returns = evaluate_policy(lambda obs: ort_actions(session, obs[None])[0], config.env_id,
                                      retrain_cfg.episodes, seed=1000)
            summary[name] = {k: result[k] for k in ("hidden", "activation", "sparsity", "nnz", "final_loss",
                                                    "train_seconds")} | {
                "mean_return": float(returns.mean()), "std_return": float(returns.std())}
        write_json(folder / "retrain.json", summary)
        return summary

    def run_report(folder: Path) -> dict:
        write_report(out, folder)
        return {"report": str(folder / "report.md")}

    return [
        Stage("train", asdict(train_cfg) | {"hidden": list(train_cfg.hidden)}, [],
              ["checkpoint.pt", "metrics.csv", "eval.json"], run_train),
        Stage("evaluate", asdict(evaluate_cfg), [checkpoint], ["eval.json"], run_evaluate),
        Stage("export", asdict(export_cfg), [checkpoint],
              ["actor.onnx", "actor.dense.onnx", "actor.int8.onnx", "actor.c", "actor.h", "actor_dense.c",
               "export.json"], run_export),
        Stage("bench", asdict(bench_cfg), [bundle / "export.json", bundle / "actor.onnx"],
              ["bench.json", "bench.md", "bench.png"], run_bench),
        Stage("embedded", asdict(embedded_cfg), [bundle / "actor.c", bundle / "actor_dense.c"], ["embedded.json"],
              run_embedded),
        # Only the settings given: the whole config names the expert by its path, which moves
        # with the output folder (the expert's content is the checkpoint input).
        Stage("distill", config.stages["distill"], [checkpoint] if distill_cfg.init == "expert" else [],
              ["dataset.npz", "dataset.json", "fitness.csv", "fitness.png"], run_distill),
        Stage("retrain", asdict(retrain_cfg), [dataset / "dataset.npz", bundle / "actor.onnx"],
              ["policy.dense.onnx", "policy.sparse.onnx", "retrain.json"], run_retrain),
        Stage("report", {}, [checkpoint, out / "train" / "metrics.csv", out / "evaluate" / "eval.json",
                             bundle / "export.json", out / "bench" / "bench.json", out / "embedded" / "embedded.json",
                             dataset / "dataset.npz", out / "retrain" / "retrain.json"],
              ["report.md", "report.html", "learning_curve.png"], run_report),
    ]


def compress(config: PipelineConfig, out: Path, progress: bool = True) -> list[dict]:
    """Run (or resume) every stage; returns one record per stage for the summary table."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    stages = build_stages(config, out, progress)
    for index, stage in enumerate(stages, 1):
        folder = stage.folder(out)
        header = f"[{index}/{len(stages)}] {stage.name}"
        if stage.is_done(out):
            stamp = stage.stamp(out)
            records.append({"stage": stage.name, "status": "up to date", "seconds": stamp["seconds"],
                            "summary": stamp["summary"]})
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
            "outputs": {name: sha256_file(folder / name) for name in stage.outputs},
            "summary": summary, "seconds": time.perf_counter() - started}
        write_json(folder / STAMP, stamp)
        records.append({"stage": stage.name, "status": "done", "seconds": stamp["seconds"], "summary": summary})
    return records
