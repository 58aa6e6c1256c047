"""The bad-input cases, command by command, that tests/test_bad_input.py runs through the real CLI.

One table (`CASES`): the arguments after `tinypolicy`, a setup that lays the inputs out in
the case's own folder (the working directory of the command), and for some cases what the
error must (not) say or which files must not exist afterwards. A setup copies from `inputs`,
the valid inputs the test module builds once (a checkpoint, an export bundle, a dataset, a
mask, AD histories and an AD checkpoint), so a command can only ever touch its own copies.

The table is no test module of its own so that benchmarks.reliability can count its cases
without importing pytest or any test.
"""
from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests.foreign_files import sb3_zip
from tinypolicy.checkpoint import load_checkpoint, save_checkpoint
from tinypolicy.models import TwinCritic
from tinypolicy.ondevice.artefact import sha256_file
from tinypolicy.pipeline.cli import load_presets
from tinypolicy.pipeline.compress import STAMP, PipelineConfig, build_stages

# /proc refuses new entries to everyone, root included (a chmod'ed folder does not stop root).
READ_ONLY = "/proc/tinypolicy-bad-input"
GARBAGE = np.random.default_rng(0).bytes(512)  # not UTF-8, not a zip, not a pickle, not protobuf

Setup = Callable[[Path, dict], None]


@dataclass(frozen=True)
class Case:
    id: str
    args: str                                # after `tinypolicy`, shell-quoted; paths relative to the case folder
    setup: tuple[Setup, ...] = ()
    stderr_has: tuple[str, ...] = ()         # e.g. the path the user typed, not one the program guessed
    stderr_lacks: tuple[str, ...] = ()
    absent_after: tuple[str, ...] = ()       # glob patterns: nothing may be left behind under these names
    confined_to: str | None = None           # every new file or folder must lie in this folder
    full_disk: bool = False
    slow: bool = False                       # loads an env, a model or every stage before refusing (integration)

    @property
    def command(self) -> str:
        words = shlex.split(self.args)
        return " ".join(words[:2]) if words[0] == "ad" else words[0]


# ---------------------------------------------------------------------------------- setups
# Each returns a setup step; `inputs` maps a name to a valid input (test_bad_input's `inputs` fixture).

def copy(name: str, dest: str) -> Setup:
    def step(tmp: Path, inputs: dict) -> None:
        source, target = inputs[name], tmp / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return step


def write(dest: str, content: bytes | str) -> Setup:
    def step(tmp: Path, inputs: dict) -> None:
        path = tmp / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return step


def truncate(dest: str) -> Setup:
    """Cut a file (copied by an earlier step) to half its length, as an interrupted copy does."""
    def step(tmp: Path, inputs: dict) -> None:
        path = tmp / dest
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return step


def edit_json(dest: str, **changes) -> Setup:
    def step(tmp: Path, inputs: dict) -> None:
        path = tmp / dest
        path.write_text(json.dumps(json.loads(path.read_text()) | changes, indent=2))
    return step


def edit_checkpoint(dest: str, edit: Callable[[dict], None]) -> Setup:
    """`edit` the content of a copied checkpoint, saved back as tinypolicy saves one: a file that
    loads, holding what no run writes."""
    def step(tmp: Path, inputs: dict) -> None:
        data = {k: v for k, v in load_checkpoint(tmp / dest).data.items() if k not in ("format", "version")}
        edit(data)
        save_checkpoint(tmp / dest, data)
    return step


def foreign_torch_file(dest: str) -> Setup:
    """A loadable torch file that is not a tinypolicy artefact (someone else's state dict)."""
    def step(tmp: Path, inputs: dict) -> None:
        torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, tmp / dest)
    return step


SWEEP_TRAIN = {"total_steps": "1000", "hidden": "[8, 8]", "eval_interval": "500", "eval_episodes": "1"}


def sweep_config(dest: str = "sweep.toml", out: str = "out", train: dict[str, str] | None = None,
                 **fields: str) -> Setup:
    """A sweep config of one tiny Pendulum job writing to the case folder's `out`; `fields` and
    `train` (TOML values) replace its own top-level and [train] values."""
    def step(tmp: Path, inputs: dict) -> None:
        values = {"out": json.dumps(str(tmp / out)), "envs": '["Pendulum-v1"]', "methods": '["dense"]',
                  "seeds": "[0]", "sparsities": "[[0.9, 0.8]]"} | fields
        table = SWEEP_TRAIN | (train or {})
        text = "".join(f"{key} = {value}\n" for key, value in values.items()) + "[train]\n"
        text += "".join(f"{key} = {value}\n" for key, value in table.items())
        path = tmp / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return step


def finished_compress_train(out: str = "art") -> Setup:
    """`compress --env Hopper-v5 --preset tiny --out OUT` with its train stage done and stamped:
    the hours of training that a rerun with other settings must not wipe."""
    def step(tmp: Path, inputs: dict) -> None:
        root = tmp / out
        stage = build_stages(PipelineConfig.from_preset("Hopper-v5", load_presets(None)["tiny"]), root, False)[0]
        folder = stage.folder(root)
        folder.mkdir(parents=True)
        shutil.copyfile(inputs["checkpoint"], folder / "checkpoint.pt")
        (folder / "metrics.csv").write_text("step,eval_return\n4000,123.4\n")
        (folder / "eval.json").write_text(json.dumps({"mean_return": 123.4, "steps": 4000}))
        summary = {"actor_sparsity": 0.9, "critic_sparsity": 0.8, "steps": 4000}
        stamp = stage.expected_stamp() | {"outputs": {name: sha256_file(folder / name) for name in stage.outputs},
                                          "summary": summary, "seconds": 60.0}
        (folder / STAMP).write_text(json.dumps(stamp))
    return step


CHECKPOINT = copy("checkpoint", "ckpt.pt")
BUNDLE = copy("bundle", "bundle")
DATASET = copy("dataset", "dist")
MASK = copy("mask", "mask.onnx")
HISTORIES = copy("histories", "data")
AD_RUN = copy("ad_run", "ad")
NOTES = write("notes.txt", "a file the user keeps here\n")
# The module's inputs are built with these flags, so that a case can resume them with one changed.
AD_COLLECT = "--seeds-per-goal 1 --episodes 16 --keep-every 4"
AD_MODEL = "--batch 4 --window 10 --dim 8 --layers 1 --heads 2 --ff-dim 16"
TRAIN_PENDULUM = "--env Pendulum-v1 --steps 300 --hidden 8,8 --eval-interval 100 --checkpoint-interval 100 " \
                 "--eval-episodes 1 --quiet"
BENCH_SHORT = "--calls 10 --c-calls 10 --rounds 1 --episodes 1"


# ---------------------------------------------------------------------------------- the table

CASES = [
    # ------------------------------------------------------------------ train
    Case("train-lr-nan", "train --env Hopper-v5 --out run --lr nan"),
    Case("train-lr-negative", "train --env Hopper-v5 --out run --lr -1"),
    Case("train-lr-inf", "train --env Hopper-v5 --out run --lr inf"),
    Case("train-seed-negative", "train --env Hopper-v5 --out run --seed -1"),
    Case("train-warm-up-past-the-run", "train --env Hopper-v5 --out run --steps 5000 --learning-starts 5000",
         stderr_has=("--learning-starts",)),
    Case("train-discrete-env", "train --env CartPole-v1 --out run"),
    Case("train-init-from-garbage", "train --env Hopper-v5 --init-from bad.pt --out run", (write("bad.pt", GARBAGE),),
         stderr_has=("bad.pt",)),
    Case("train-unknown-env", "train --env Hopper-v99 --out run"),
    Case("train-init-from-nan-critic", "train --env Hopper-v5 --init-from ckpt.pt --hidden 16,16 --out run --quiet",
         (CHECKPOINT, edit_checkpoint("ckpt.pt", lambda d: d["critic"]["net.layers.0.weight"].fill_(float("nan")))),
         stderr_has=("critic",)),
    Case("train-init-from-critic-of-other-widths",
         "train --env Hopper-v5 --init-from ckpt.pt --hidden 16,16 --out run --quiet",
         (CHECKPOINT, edit_checkpoint("ckpt.pt", lambda d: d.update(critic=TwinCritic(11, 3, [8, 8]).state_dict()))),
         stderr_has=("critic",)),
    Case("train-out-is-file", "train --env Hopper-v5 --out notes.txt", (NOTES,)),
    Case("train-out-read-only", f"train --env Hopper-v5 --out {READ_ONLY}"),
    # A checkpoint that evaluates and exports but has no optimiser state to resume from.
    Case("train-resume-without-train-state", "train --env Hopper-v5 --out run --hidden 16,16",
         (copy("checkpoint", "run/checkpoint.pt"),), slow=True),
    Case("train-resume-truncated-checkpoint", "train --env Hopper-v5 --out run --hidden 16,16",
         (copy("checkpoint", "run/checkpoint.pt"), truncate("run/checkpoint.pt")), slow=True),
    Case("train-full-disk", f"train {TRAIN_PENDULUM} --out run", full_disk=True, absent_after=("run/*.tmp",),
         slow=True),

    # ------------------------------------------------------------------ evaluate
    Case("evaluate-foreign-checkpoint", "evaluate weights.pt", (foreign_torch_file("weights.pt"),)),
    # The folder exists and holds a checkpoint: an error may name either, but not call them missing.
    Case("evaluate-run-folder", "evaluate run --episodes 1",
         (copy("checkpoint", "run/checkpoint.pt"), truncate("run/checkpoint.pt")), stderr_lacks=("does not exist",)),
    Case("evaluate-episodes-zero", "evaluate ckpt.pt --episodes 0", (CHECKPOINT,)),
    Case("evaluate-unknown-activation", "evaluate ckpt.pt --episodes 1",
         (CHECKPOINT, edit_checkpoint("ckpt.pt", lambda d: d.update(actor_arch={"activation": "swish"}))),
         stderr_has=("swish",)),
    Case("evaluate-unknown-actor-arch-key", "evaluate ckpt.pt --episodes 1",
         (CHECKPOINT, edit_checkpoint("ckpt.pt", lambda d: d.update(actor_arch={"dropout": 0.1}))),
         stderr_has=("dropout",)),
    Case("evaluate-seed-negative", "evaluate ckpt.pt --seed -1 --episodes 1", (CHECKPOINT,)),

    # ------------------------------------------------------------------ compress
    Case("compress-existing-out-other-env", "compress --env Pendulum-v1 --preset tiny --out art --quiet",
         (finished_compress_train(),), slow=True),
    Case("compress-existing-out-changed-train-set",
         "compress --env Hopper-v5 --preset tiny --out art --quiet --set train.lr=0.001",
         (finished_compress_train(),), slow=True),
    Case("compress-set-unknown-stage", "compress --preset tiny --out art --set trian.lr=0.1", slow=True),
    Case("compress-set-string-steps", "compress --preset tiny --out art --set 'train.total_steps=\"abc\"'", slow=True),
    Case("compress-set-lr-nan", "compress --preset tiny --out art --quiet --set train.lr=nan", slow=True),
    # Read only when the evaluate stage runs, after training, unless checked up front.
    Case("compress-set-evaluate-episodes-zero", "compress --preset tiny --out art --quiet --set evaluate.episodes=0",
         slow=True),
    Case("compress-flag-lr-negative", "compress --preset tiny --out art --lr -1"),
    Case("compress-from-missing", "compress --preset tiny --from nope.pt --out art", stderr_has=("nope.pt",),
         absent_after=("art",)),
    Case("compress-from-garbage", "compress --preset tiny --from bad.pt --out art", (write("bad.pt", GARBAGE),),
         stderr_has=("bad.pt",), absent_after=("art",)),
    # A rerun of the train stage deletes its folder, and with it the policy to compress.
    Case("compress-from-inside-out", "compress --preset tiny --from art/train/checkpoint.pt --out art --rerun train "
                                     "--quiet", (copy("checkpoint", "art/train/checkpoint.pt"),),
         stderr_has=("art/train/checkpoint.pt",)),
    Case("compress-init-from", "compress --preset tiny --init-from ckpt.pt --out art --quiet", (CHECKPOINT,),
         stderr_has=("--from",), absent_after=("art",)),
    Case("compress-set-init-from", "compress --preset tiny --set train.init_from=ckpt.pt --out art --quiet",
         (CHECKPOINT,), stderr_has=("--from",), absent_after=("art",), slow=True),
    Case("compress-presets-string-number", "compress --preset tiny --presets p.toml --out art",
         (write("p.toml", '[tiny.train]\ntotal_steps = "4000"\n'),), slow=True),
    Case("compress-presets-garbage", "compress --preset tiny --presets p.toml --out art", (write("p.toml", GARBAGE),),
         slow=True),

    # ------------------------------------------------------------------ export
    Case("export-truncated-checkpoint", "export ckpt.pt --out bundle", (CHECKPOINT, truncate("ckpt.pt"))),
    Case("export-parity-samples-zero", "export ckpt.pt --out bundle --parity-samples 0", (CHECKPOINT,)),
    Case("export-seed-negative", "export ckpt.pt --out bundle --seed -1 --parity-samples 50 --episodes 1",
         (CHECKPOINT,)),
    Case("export-out-is-file", "export ckpt.pt --out notes.txt --parity-samples 50 --episodes 1",
         (CHECKPOINT, NOTES)),
    Case("export-out-read-only", f"export ckpt.pt --out {READ_ONLY} --parity-samples 50 --episodes 1", (CHECKPOINT,)),
    Case("export-full-disk", "export ckpt.pt --out bundle --parity-samples 50 --episodes 1 --quiet", (CHECKPOINT,),
         full_disk=True, absent_after=("bundle/*.tmp",), slow=True),

    # ------------------------------------------------------------------ bench
    Case("bench-truncated-onnx", "bench bundle", (BUNDLE, truncate("bundle/actor.onnx")), slow=True),
    # export.json's hashes still match its files: only what it says about them disagrees with the ONNX.
    Case("bench-manifest-obs-dim-edited", f"bench bundle {BENCH_SHORT}",
         (BUNDLE, edit_json("bundle/export.json", obs_dim=12)), slow=True),
    Case("bench-manifest-env-edited", f"bench bundle {BENCH_SHORT}",
         (BUNDLE, edit_json("bundle/export.json", env_id="Walker2d-v5")), slow=True),
    Case("bench-calls-negative", "bench bundle --calls -5", (BUNDLE,)),
    Case("bench-out-is-file", f"bench bundle --out notes.txt {BENCH_SHORT}", (BUNDLE, NOTES), slow=True),
    Case("bench-out-read-only", f"bench bundle --out {READ_ONLY} {BENCH_SHORT}", (BUNDLE,), slow=True),

    # ------------------------------------------------------------------ embedded
    Case("embedded-unknown-target", "embedded bundle --target cortex-m0", (BUNDLE,)),
    Case("embedded-truncated-c", "embedded bundle --target aarch64", (BUNDLE, truncate("bundle/actor.c")), slow=True),
    Case("embedded-manifest-obs-dim-edited", "embedded bundle --target aarch64 --quiet",
         (BUNDLE, edit_json("bundle/export.json", obs_dim=12)), slow=True),

    # ------------------------------------------------------------------ sweep
    Case("sweep-garbage-config", "sweep sweep.toml", (write("sweep.toml", GARBAGE),), slow=True),
    # Two levels down, so that an escape still lands inside the case folder.
    Case("sweep-env-escapes-out", "sweep a/b/sweep.toml --quiet",
         (sweep_config("a/b/sweep.toml", out="a/b/out", envs='["../../escape"]'),), confined_to="a/b/out", slow=True),
    Case("sweep-empty-envs", "sweep sweep.toml --quiet", (sweep_config(envs="[]"),), slow=True),
    Case("sweep-envs-string", "sweep sweep.toml --quiet", (sweep_config(envs='"Hopper-v5"'),), slow=True),
    Case("sweep-seed-string", "sweep sweep.toml --quiet", (sweep_config(seeds='["0"]'),), slow=True),
    Case("sweep-flat-sparsities", "sweep sweep.toml --quiet", (sweep_config(sparsities="[0.9, 0.85]"),), slow=True),
    Case("sweep-lr-nan", "sweep sweep.toml --quiet", (sweep_config(train={"lr": "nan"}),), slow=True),

    # ------------------------------------------------------------------ distill
    # A failed start must not leave its copy of the bad expert, which a rerun would then trust.
    Case("distill-garbage-expert", "distill --env Hopper-v5 --init expert --expert bad.pt --out d --quiet",
         (write("bad.pt", GARBAGE),), absent_after=("d/expert.pt",), slow=True),
    Case("distill-expert-other-env", "distill --env Walker2d-v5 --init expert --expert ckpt.pt --out d --quiet",
         (CHECKPOINT,), absent_after=("d/expert.pt",), slow=True),
    Case("distill-sigma-nan", "distill --env Hopper-v5 --out d --sigma nan"),
    Case("distill-seed-negative", "distill --env Hopper-v5 --out d --seed -1 --quiet"),

    # ------------------------------------------------------------------ generalise
    Case("generalise-typo-beside-dataset", "generalise dist/typo_name --env Hopper-v5", (DATASET,),
         stderr_has=("typo_name",), slow=True),
    Case("generalise-truncated-dataset", "generalise dist --env Hopper-v5", (DATASET, truncate("dist/dataset.npz")),
         slow=True),
    Case("generalise-seeds-zero", "generalise dist --env Hopper-v5 --seeds 0", (DATASET,)),

    # ------------------------------------------------------------------ retrain
    Case("retrain-typo-beside-dataset", "retrain dist/typo_name --out policy.onnx", (DATASET,),
         stderr_has=("typo_name",)),
    Case("retrain-out-is-dataset", "retrain dist --out dist/dataset.npz", (DATASET,)),
    Case("retrain-out-is-mask", "retrain dist --mask mask.onnx --out mask.onnx", (DATASET, MASK)),
    Case("retrain-out-is-directory", "retrain dist --out policies", (DATASET, write("policies/keep.onnx", "x"))),
    Case("retrain-out-read-only", f"retrain dist --out {READ_ONLY}/policy.onnx", (DATASET,)),
    # The previous policy must survive a write that fails half-way.
    Case("retrain-full-disk", "retrain dist --out policy.onnx", (DATASET, write("policy.onnx", "previous policy")),
         full_disk=True, absent_after=("*.tmp",)),
    Case("retrain-garbage-mask", "retrain dist --mask mask.onnx --out policy.onnx",
         (DATASET, write("mask.onnx", GARBAGE))),
    Case("retrain-lr-nan", "retrain dist --out policy.onnx --lr nan", (DATASET,)),
    Case("retrain-seed-negative", "retrain dist --out policy.onnx --seed -1", (DATASET,)),

    # ------------------------------------------------------------------ ad collect
    Case("ad-collect-seed-negative", f"ad collect --out data --seed -1 {AD_COLLECT}"),
    Case("ad-collect-epsilon-decay-zero", f"ad collect --out data --epsilon-decay 0 {AD_COLLECT}"),
    Case("ad-collect-truncated-existing", f"ad collect --out data {AD_COLLECT}",
         (HISTORIES, truncate("data/histories.npz")), slow=True),
    Case("ad-collect-full-disk", f"ad collect --out fresh {AD_COLLECT}", full_disk=True,
         absent_after=("fresh/*.tmp",), slow=True),

    # ------------------------------------------------------------------ ad train
    Case("ad-train-data-typo-beside-histories", f"ad train --data data/typo_name --out m --steps 2 {AD_MODEL} --quiet",
         (HISTORIES,), stderr_has=("typo_name",), slow=True),
    Case("ad-train-foreign-manifest", "ad train --data data --out m",
         (HISTORIES, edit_json("data/histories.json", format="tinypolicy.dataset")), slow=True),
    Case("ad-train-lr-inf", "ad train --data data --out m --lr inf", (HISTORIES,)),
    Case("ad-train-resume-other-settings", f"ad train --data data --out ad --steps 4 {AD_MODEL} --dim 16 --quiet",
         (HISTORIES, AD_RUN), slow=True),
    Case("ad-train-garbage-checkpoint", f"ad train --data data --out m --steps 2 {AD_MODEL} --quiet",
         (HISTORIES, write("m/checkpoint.pt", GARBAGE)), slow=True),

    # ------------------------------------------------------------------ ad evaluate
    Case("ad-evaluate-training-checkpoint", "ad evaluate ckpt.pt --out e", (CHECKPOINT,), slow=True),
    # Without a check up front, the garbage ED checkpoint is read after AD's whole curve.
    Case("ad-evaluate-garbage-ed-checkpoint", "ad evaluate ad/checkpoint.pt --ed ed.pt --out e --quiet",
         (AD_RUN, write("ed.pt", GARBAGE)), slow=True),
    Case("ad-evaluate-seeds-zero", "ad evaluate ad/checkpoint.pt --out e --seeds 0", (AD_RUN,)),
    Case("ad-evaluate-seed-negative", "ad evaluate ad/checkpoint.pt --out e --seed -1 --episodes 2 "
                                      "--short-episodes 2 --seeds 1 --quiet", (AD_RUN,)),

    # ------------------------------------------------------------------ ad export
    Case("ad-export-truncated-checkpoint", "ad export ad/checkpoint.pt --out x",
         (AD_RUN, truncate("ad/checkpoint.pt")), slow=True),
    Case("ad-export-episodes-zero", "ad export ad/checkpoint.pt --out x --episodes 0", (AD_RUN,)),
    Case("ad-export-out-is-file", "ad export ad/checkpoint.pt --out notes.txt --episodes 2 --quiet", (AD_RUN, NOTES),
         slow=True),

    # ------------------------------------------------------------------ import
    Case("import-sb3-dqn", "import dqn.zip --env Pendulum-v1 --out imp",
         (write("dqn.zip", sb3_zip("stable_baselines3.dqn.policies", "Discrete")),), stderr_has=("DQN",),
         absent_after=("imp/checkpoint.pt",)),
    Case("import-sb3-discrete-actions", "import ppo.zip --env Pendulum-v1 --out imp",
         (write("ppo.zip", sb3_zip("stable_baselines3.common.policies", "Discrete")),), stderr_has=("Discrete",),
         absent_after=("imp/checkpoint.pt",)),
    Case("import-discrete-env", "import weights.pt --env CartPole-v1 --out imp", (foreign_torch_file("weights.pt"),),
         absent_after=("imp/checkpoint.pt",)),
    # fc: 4 inputs, 3 outputs; Pendulum has 3 observations and 1 action.
    Case("import-shapes-do-not-fit-env", "import weights.pt --env Pendulum-v1 --out imp",
         (foreign_torch_file("weights.pt"),), stderr_has=("weights.pt", "takes 4 observations"),
         absent_after=("imp/checkpoint.pt",)),
    Case("import-pickle-only", "import vecnormalize.pkl --env Pendulum-v1 --out imp",
         (write("vecnormalize.pkl", b"\x80\x02cbuiltins\nobject\nq\x00."),), stderr_has=("never unpickles",),
         absent_after=("imp/checkpoint.pt",)),
    Case("import-obs-stats-pickle", "import weights.pt --env Pendulum-v1 --out imp --obs-stats vecnormalize.pkl",
         (foreign_torch_file("weights.pt"), write("vecnormalize.pkl", b"\x80\x02cbuiltins\nobject\nq\x00.")),
         stderr_has=("vecnormalize.pkl", "never unpickles"), absent_after=("imp/checkpoint.pt",)),
    Case("import-garbage-onnx", "import actor.onnx --env Pendulum-v1 --out imp", (write("actor.onnx", GARBAGE),),
         absent_after=("imp/checkpoint.pt",)),
    Case("import-tinypolicy-checkpoint", "import ckpt.pt --env Pendulum-v1 --out run",
         (CHECKPOINT, copy("checkpoint", "run/checkpoint.pt")), stderr_has=("tinypolicy checkpoint",)),
]

