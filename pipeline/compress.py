"""`tinypolicy compress`: run the pipeline's stages in order, each one resumable.

    train -> evaluate -> export -> bench -> embedded -> distill -> retrain -> report

Every stage writes its artefacts into its own folder under the output directory, with a
`stamp.json` that records its parameters (and their hash) and the hash of every input file
when it starts, and of every output file when it finishes. Re-running skips a stage whose
stamp still matches and resumes an interrupted one (training and distillation pick up
their last checkpoint). Before anything runs, a folder holding work (finished or not) done
with other parameters, or a finished one whose outputs were edited since, is refused with
one line naming each such stage and what differs; `force` (`--force`) reruns those stages
and `rerun` (`--rerun STAGE`) reruns a stage even when it is up to date, discarding the
folder's earlier content. A stage whose inputs changed because an earlier stage ran again
reruns without asking: its folder is derived from theirs. A kill at any moment loses
nothing that a finished stage wrote.

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
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tinypolicy.checkpoint import Checkpoint, checkpoint_file, load_checkpoint
from tinypolicy.config import from_dict, setting_changes
from tinypolicy.envs import actor_policy, evaluate_policy, make_env, random_policy_returns
from tinypolicy.export.bench import bench_bundle
from tinypolicy.export.bundle import export_bundle
from tinypolicy.export.embedded import embedded_report, missing_tools, write_embedded_json
from tinypolicy.export.runtimes import ort_actions, ort_session
from tinypolicy.export.settings import BenchConfig, EmbeddedConfig, ExportConfig
from tinypolicy.ondevice.artefact import prepare_output_dir, sha256_file, write_json
from tinypolicy.ondevice.errors import UserError
from tinypolicy.ondevice.retrain import retrain
from tinypolicy.pipeline.distill import distill
from tinypolicy.pipeline.report import write_report
from tinypolicy.pipeline.settings import (
    RETRAINED_EVAL_SEED,
    DistillConfig,
    EvaluateConfig,
    ReportConfig,
    RetrainConfig,
    StudentConfig,
    TrainConfig,
)
from tinypolicy.pipeline.student import distil_student
from tinypolicy.pipeline.train import train

STAMP = "stamp.json"
STAGE_CONFIGS = {"train": TrainConfig, "evaluate": EvaluateConfig, "export": ExportConfig, "bench": BenchConfig,
                 "embedded": EmbeddedConfig, "distill": DistillConfig, "retrain": RetrainConfig,
                 "report": ReportConfig}
STAGES = tuple(STAGE_CONFIGS)  # in the order they run
# With --from, the train stage compresses the given policy instead of training one: it is distilled
# into a sparse student (this table, at the train table's actor sparsity and seed), or, with a train
# method given, a policy with critics is fine-tuned in the env with it (the train table). Measured on
# an SB3 TD3 Hopper teacher (3,036) at 95%: fine-tuning while pruning swung between 300 and 3,200 (and
# ended at 620 with the quick preset's settings), the student's iterations stayed at 2,200-3,060
# (docs/BENCHMARKS.md).
SETTINGS = STAGE_CONFIGS | {"student": StudentConfig}
# compress distils from the expert it has just trained; `tinypolicy distill` starts from zeros, as the paper does.
# It distils for the policies a robot retrains (mode a: any init and architecture, and the exported actor's
# sparse topology), not for one network: a dataset tuned to one init is a compressed checkpoint.
PIPELINE_DEFAULTS = {"distill": {"init": "expert", "mode": "a"}}


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


@dataclass
class Stage:
    name: str
    params: dict
    inputs: list[Path]            # files of earlier stages this stage reads
    outputs: list[str]            # files (relative to the stage folder) it must produce
    run: Callable[[Path], dict]   # writes the outputs into the folder, returns a summary
    # Settings added to the stage since a stamp was written take these values, as that run used them.
    defaults: dict = field(default_factory=dict)

    def __post_init__(self):
        # as a stamp stores them: tuples are lists
        self.params, self.defaults = json.loads(json.dumps([self.params, self.defaults]))

    def saved_settings(self, stamp: dict) -> dict | None:
        """The stamp's settings, completed with the defaults of settings it predates (None for
        a stamp that recorded only their hash)."""
        saved = stamp.get("settings")
        if not isinstance(saved, dict):
            return None
        return {k: self.defaults[k] for k in self.params if k not in saved and k in self.defaults} | saved

    def same_params(self, stamp: dict) -> bool:
        return stamp.get("params") == params_hash(self.params) or self.saved_settings(stamp) == self.params

    def folder(self, out: Path) -> Path:
        return out / self.name

    def expected_stamp(self) -> dict:
        """The stamp of a run with these parameters and inputs, before it has outputs."""
        return {"params": params_hash(self.params), "settings": self.params,
                "inputs": {str(p): sha256_file(p) for p in self.inputs}}

    def stamp(self, out: Path) -> dict | None:
        """The folder's stamp; an unreadable one reads as empty (never trusted)."""
        path = self.folder(out) / STAMP
        if not path.exists():
            return None
        try:
            stamp = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return stamp if isinstance(stamp, dict) else {}

    def _matches(self, stamp: dict) -> bool:
        # Inputs compare by content alone: the same output folder given by another path is the same work.
        return (self.same_params(stamp)
                and list(stamp.get("inputs", {}).values()) == [sha256_file(p) for p in self.inputs])

    def is_done(self, out: Path) -> bool:
        stamp = self.stamp(out)
        if not stamp or not self._matches(stamp):
            return False
        outputs = stamp.get("outputs", {})
        return all((self.folder(out) / name).exists() and sha256_file(self.folder(out) / name) == outputs.get(name)
                   for name in self.outputs)

    def holds_work(self, out: Path) -> bool:
        """Whether the folder holds anything besides the stamp (a stamp alone is a start that
        failed before any work)."""
        folder = self.folder(out)
        return folder.is_dir() and any(path.name != STAMP for path in folder.iterdir())

    def conflicts(self, out: Path) -> list[str]:
        """What sets the folder's work apart from this run's, other than its inputs: settings that
        differ, outputs edited since the stage finished. An input differs only when the stage
        that writes it ran again (a file edited there is that stage's conflict)."""
        stamp = self.stamp(out)
        if stamp is None or not self.holds_work(out):
            return []
        if not stamp:
            return [f"unreadable {STAMP}"]
        if not self.same_params(stamp):
            saved = self.saved_settings(stamp)  # stamps written before they recorded settings hold the hash alone
            return (setting_changes(saved, self.params) if saved is not None else []) or ["parameters changed"]
        folder = self.folder(out)
        return [f"{name} changed since the stage finished" for name, digest in stamp.get("outputs", {}).items()
                if (folder / name).is_file() and sha256_file(folder / name) != digest]

    def discard_reasons(self, out: Path, rerun: bool) -> list[str]:
        """Why the folder's work cannot be resumed; empty when there is none, or when it was done
        with this run's parameters and inputs."""
        if not self.holds_work(out):
            return []
        reasons = (["--rerun"] if rerun else []) + self.conflicts(out)
        stamp = self.stamp(out)
        if not reasons and stamp and not self._matches(stamp):
            reasons.append("its inputs changed")
        return reasons


@dataclass
class PipelineConfig:
    """Everything `compress` needs: the env and, per stage, the settings that the preset and
    the overrides give (the others keep their dataclass's defaults)."""
    env_id: str
    stages: dict[str, dict]
    source: Path | None = None  # --from: the policy to compress (a checkpoint), else one is trained
    # --from with a train method given (--method, --set train.method): fine-tune the policy and
    # its critics in the env with that method, instead of distilling a sparse student (DAgger)
    fine_tune: bool = False

    @classmethod
    def from_preset(cls, env_id: str, preset: dict, overrides: dict[str, dict] | None = None,
                    source: Path | None = None) -> PipelineConfig:
        overrides = overrides or {}
        for origin, tables in (("preset", preset), ("--set overrides", overrides)):
            if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
                raise UserError(f"the {origin} must hold one table per stage")
            unknown = sorted(set(tables) - set(SETTINGS))
            if unknown:
                raise UserError(f"unknown stages {unknown} in the {origin}; stages are {', '.join(SETTINGS)}")
            # A trained policy comes in by --from alone, the route that compares it by content and records it.
            if "init_from" in tables.get("train", {}):
                raise UserError(f"train.init_from in the {origin}: compress starts from a trained policy given as "
                                "--from CHECKPOINT")
        config = cls(env_id, {name: PIPELINE_DEFAULTS.get(name, {}) | preset.get(name, {}) | overrides.get(name, {})
                              for name in SETTINGS}, source,
                     fine_tune=source is not None and "method" in overrides.get("train", {}))
        config.train_config()  # fail early, before any work, on a bad key or value of any stage
        config.distill_config(Path("checkpoint.pt"), Path("actor.onnx"))
        config.student_config()
        for name in STAGES:
            if name not in ("train", "distill"):
                config.settings(name)
        return config

    def settings(self, stage: str, **fixed):
        """`stage`'s config; `fixed` are values compress sets itself (the env, the expert), which
        neither the preset nor the overrides may."""
        return from_dict(SETTINGS[stage], self.stages[stage], f"stage {stage}", fixed=fixed)

    def student_config(self) -> StudentConfig:
        train = self.train_config()
        return self.settings("student", actor_sparsity=train.actor_sparsity, seed=train.seed, threads=train.threads)

    def train_config(self) -> TrainConfig:
        cfg = self.settings("train", env_id=self.env_id)
        cfg.validate()
        return cfg

    def distill_config(self, expert: Path, actor: Path) -> DistillConfig:
        """With `init` expert, from `expert`; in mode a, also for the sparse topology of `actor`."""
        fixed = {"env_id": self.env_id}
        if self.stages["distill"].get("init") == "expert":
            fixed["expert"] = str(expert)
        if self.stages["distill"].get("mode") == "a":
            fixed["arch_mask"] = str(actor)
        return self.settings("distill", **fixed)


def build_stages(config: PipelineConfig, out: Path, progress: bool) -> list[Stage]:
    checkpoint = out / "train" / "checkpoint.pt"
    bundle = out / "export"
    dataset = out / "distill"
    train_cfg, distill_cfg = config.train_config(), config.distill_config(checkpoint, bundle / "actor.onnx")
    from_expert = distill_cfg.init == "expert"
    distill_inputs = [checkpoint] * from_expert + [bundle / "actor.onnx"] * (distill_cfg.arch_mask is not None)
    evaluate_cfg, export_cfg, bench_cfg, embedded_cfg, retrain_cfg = (
        config.settings(name) for name in ("evaluate", "export", "bench", "embedded", "retrain"))

    train_stage = (Stage("train", asdict(train_cfg), [], ["checkpoint.pt", "metrics.csv", "eval.json"],
                         lambda folder: train(train_cfg, folder, progress=progress),
                         defaults=train_defaults(config.env_id))
                   if config.source is None else source_stage(config, progress))

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
        parity = manifest["parity"]
        return {"widths": manifest["widths"], "macs": manifest["macs"],
                "parity_within_1e-5": parity["within_tolerance"],
                "parity_max_abs_error": max(parity["max_abs_error"].values()),
                "parity_roundoff_scale": parity["roundoff_scale"]}

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

    def retrained(folder: Path, name: str, seeds: list[int], start: str, **options) -> dict:
        """Policies retrained on the device's path (NumPy -> ONNX, run by ONNX Runtime), one per
        seed, labelled with what they started from and their architecture. The first seed's is
        policy.NAME.onnx, the others' policy.NAME.sK.onnx."""
        returns, results = [], []
        for k, seed in enumerate(seeds):
            path = folder / (f"policy.{name}.onnx" if k == 0 else f"policy.{name}.s{seed}.onnx")
            results.append(retrain(dataset, path, seed=seed, **options))
            session = ort_session(path)
            returns.append(float(evaluate_policy(lambda obs: ort_actions(session, obs[None])[0], config.env_id,
                                                 retrain_cfg.episodes, seed=RETRAINED_EVAL_SEED).mean()))
        first = results[0]
        architecture = f"{'-'.join(map(str, first['hidden']))} {first['activation']}"
        if first["mask"]:
            architecture = f"sparse topology of {Path(first['mask']).parent.name}/{Path(first['mask']).name}: " \
                           f"{architecture}, {first['sparsity']:.1%} sparse"
        return {k: first[k] for k in ("hidden", "activation", "sparsity", "nnz", "final_loss", "train_seconds")} | {
            "architecture": architecture, "start": start, "seeds": seeds, "returns": returns,
            "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns))}

    def run_retrain(folder: Path) -> dict:
        # A robot's policy starts from its own init, not from the one a HaDES-F dataset was evolved
        # for: fresh inits are the deployed case. The shipped init, when there is one, is reported
        # beside them (never in their place), so the gap between the two shows.
        seeds = list(range(retrain_cfg.seed, retrain_cfg.seed + retrain_cfg.seeds))
        fresh = f"fresh init (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})"
        summary = {"dense": retrained(folder, "dense", seeds, fresh),
                   "sparse": retrained(folder, "sparse", seeds, fresh, mask_path=bundle / "actor.onnx")}
        own_init = dataset / "policy_init.npz"
        if own_init.exists():
            summary["dense_own_init"] = retrained(folder, "dense_own_init", [retrain_cfg.seed],
                                                  "own init (policy_init.npz, the one the dataset was distilled for)",
                                                  init_path=own_init)
        write_json(folder / "retrain.json", summary)
        return summary

    def run_report(folder: Path) -> dict:
        write_report(out, folder)
        return {"report": str(folder / "report.md")}

    return [
        train_stage,
        Stage("evaluate", asdict(evaluate_cfg), [checkpoint], ["eval.json"], run_evaluate),
        Stage("export", asdict(export_cfg), [checkpoint],
              ["actor.onnx", "actor.dense.onnx", "actor.int8.onnx", "actor.c", "actor.h", "actor_dense.c", "actor_int8.c",
               "export.json"], run_export),
        Stage("bench", asdict(bench_cfg), [bundle / "export.json", bundle / "actor.onnx"],
              ["bench.json", "bench.md", "bench.png"], run_bench),
        Stage("embedded", asdict(embedded_cfg), [bundle / name for name in ("actor.c", "actor_dense.c", "actor_int8.c")],
              ["embedded.json"],
              run_embedded),
        # Only the settings given: the whole config names the expert by its path, which moves
        # with the output folder (the expert's content, and with it the env, is the checkpoint
        # input; without an expert nothing else records the env).
        Stage("distill", config.stages["distill"] | ({} if from_expert else {"env_id": config.env_id}),
              distill_inputs,
              ["dataset.npz", "dataset.json", "fitness.csv", "fitness.png"], run_distill),
        Stage("retrain", asdict(retrain_cfg), [dataset / "dataset.npz", bundle / "actor.onnx"],
              ["policy.dense.onnx", "policy.sparse.onnx", "retrain.json"], run_retrain),
        Stage("report", {}, [out / "train" / name for name in train_stage.outputs] + [out / "evaluate" / "eval.json",
                             bundle / "export.json", out / "bench" / "bench.json", out / "embedded" / "embedded.json",
                             dataset / "dataset.npz", out / "retrain" / "retrain.json"],
              ["report.md", "report.html", "learning_curve.png"], run_report),
    ]


def train_defaults(env_id: str) -> dict:
    """What a train stamp that predates a setting ran it with: TrainConfig's defaults (the `Stage`'s
    `defaults`)."""
    return asdict(TrainConfig(env_id=env_id))


def policy_origin(ckpt: Checkpoint) -> dict:
    """Where a policy comes from: the kind and algorithm an imported one records (`tinypolicy
    import`); one of our own checkpoints is its own origin."""
    origin = ckpt.data.get("source") or {"kind": "tinypolicy", "algo": ckpt.config["algo"].upper()}
    return {"kind": origin["kind"], "algo": origin["algo"]}


def source_stage(config: PipelineConfig, progress: bool) -> Stage:
    """The train stage of `compress --from`: the given policy compressed to the train table's
    actor sparsity, beside its own return (teacher.json) on the evaluate stage's episodes."""
    teacher = load_checkpoint(config.source)
    if teacher.env_id != config.env_id:
        raise UserError(f"{config.source} is a policy for {teacher.env_id}; pass --env {teacher.env_id}")
    source = teacher.path.resolve()  # absolute: teacher.json names it to readers in any working directory
    # What teacher.json says about the policy compressed, so that reading it needs no file that may be gone by then.
    identity = {"source": str(source), "sha256": sha256_file(source)} | policy_origin(teacher)
    evaluate_cfg = config.settings("evaluate")

    def write_teacher(folder: Path, method: str, mean: float, std: float) -> dict:
        record = identity | {"method": method, "episodes": evaluate_cfg.episodes, "seed": evaluate_cfg.seed,
                             "mean_return": mean, "std_return": std}
        write_json(folder / "teacher.json", record)
        return record

    if config.fine_tune:
        if "critic" not in teacher.data:
            raise UserError(f"{config.source} holds an actor alone, without the critics that fine-tuning "
                            f"({config.settings('train').method}) trains with; drop --method to distil it into a "
                            "sparse student")
        # The network is the teacher's: its algorithm and widths, whatever the preset trains.
        cfg = replace(config.train_config(), init_from=str(source), algo=teacher.config["algo"],
                      hidden=tuple(teacher.config["hidden"]))

        def fine_tune(folder: Path) -> dict:
            summary = train(cfg, folder, progress=progress)
            returns = evaluate_policy(actor_policy(teacher.build_actor()), config.env_id, evaluate_cfg.episodes,
                                      evaluate_cfg.seed)
            teacher_record = write_teacher(folder, f"fine-tuned ({cfg.method})", float(returns.mean()),
                                           float(returns.std()))
            return summary | {"teacher": teacher_record}

        params = {k: v for k, v in asdict(cfg).items() if k != "init_from"}  # the source is an input, by content
        return Stage("train", params, [source], ["checkpoint.pt", "metrics.csv", "eval.json", "teacher.json"],
                     fine_tune, defaults=train_defaults(config.env_id))
    student_cfg = replace(config.student_config(), eval_episodes=evaluate_cfg.episodes, eval_seed=evaluate_cfg.seed)

    def distil(folder: Path) -> dict:
        summary = distil_student(student_cfg, source, folder, progress=progress)
        teacher_record = write_teacher(folder, "DAgger student", summary["teacher_return"],
                                       summary["teacher_return_std"])
        return {"actor_sparsity": summary["sparsity"], "mean_return": summary["student_return"],
                "wall_time_s": summary["wall_time_s"], "teacher": teacher_record}

    return Stage("train", asdict(student_cfg), [source], ["checkpoint.pt", "student.json", "teacher.json"], distil)


def refuse_other_work(stages: list[Stage], out: Path, rerun: Collection[str]) -> None:
    """Raise UserError naming every stage (but those in `rerun`) whose folder holds work this
    run would discard, and what differs; touches nothing."""
    found = {stage.name: stage.conflicts(out) for stage in stages if stage.name not in rerun}
    found = {name: conflicts for name, conflicts in found.items() if conflicts}
    if found:
        listed = "; ".join(f"{name} ({', '.join(conflicts)})" for name, conflicts in found.items())
        flags = " ".join(f"--rerun {name}" for name in found)
        raise UserError(f"{out} holds work this run would discard: {listed}. Nothing was changed: to rerun and "
                        f"discard it pass --force (or {flags}), or use another --out")


def compress(config: PipelineConfig, out: Path, progress: bool = True, force: bool = False,
             rerun: Collection[str] = ()) -> list[dict]:
    """Run (or resume) every stage; returns one record per stage for the summary table.

    Before anything runs, work in `out` done with other settings is refused (`refuse_other_work`)
    unless `force`; the stages in `rerun` run again even when they are up to date."""
    unknown = sorted(set(rerun) - set(STAGES))
    if unknown:
        raise UserError(f"--rerun {', '.join(unknown)}: no such stage; stages are {', '.join(STAGES)}")
    if config.source is not None and out.resolve() in checkpoint_file(config.source).resolve().parents:
        raise UserError(f"--from {config.source} lies inside --out {out}, whose stage folders a rerun deletes; "
                        f"move it out of {out} or use another --out")
    stages = build_stages(config, out, progress)
    if not force:
        refuse_other_work(stages, out, rerun)
    make_env(config.env_id).close()  # an id that names no usable env must not create a folder
    prepare_output_dir(out)
    records = []
    for index, stage in enumerate(stages, 1):
        folder = stage.folder(out)
        header = f"[{index}/{len(stages)}] {stage.name}"
        if stage.name not in rerun and stage.is_done(out):
            stamp = stage.stamp(out)
            records.append({"stage": stage.name, "status": "up to date", "seconds": stamp["seconds"],
                            "summary": stamp["summary"]})
            print(f"{header}: up to date", flush=True)
            continue
        discard = stage.discard_reasons(out, stage.name in rerun)
        if discard:
            print(f"{header}: discarding {folder} ({'; '.join(discard)}), rerunning", flush=True)
            shutil.rmtree(folder)
        else:
            print(f"{header}: running" + (" (resuming)" if stage.holds_work(out) else ""), flush=True)
        prepare_output_dir(folder, f"the {stage.name} stage's folder")
        stamp = stage.expected_stamp()
        write_json(folder / STAMP, stamp)  # records the settings of the work until the stage finishes
        started = time.perf_counter()
        summary = stage.run(folder)
        missing = [name for name in stage.outputs if not (folder / name).exists()]
        if missing:
            raise UserError(f"stage {stage.name} did not write {', '.join(missing)}")
        stamp |= {"outputs": {name: sha256_file(folder / name) for name in stage.outputs},
                  "summary": summary, "seconds": time.perf_counter() - started}
        write_json(folder / STAMP, stamp)
        records.append({"stage": stage.name, "status": "done", "seconds": stamp["seconds"], "summary": summary})
    return records
