"""Stage settings: dicts, presets and command-line flags all derive from one dataclass per
stage (tinypolicy.config), and a bad key or value is one line, before any work."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tinypolicy.config import flag_values, from_dict, refuse_other_settings
from tinypolicy.export.settings import TARGETS, BenchConfig, EmbeddedConfig, ExportConfig
from tinypolicy.ondevice.errors import UserError
from tinypolicy.pipeline import cli
from tinypolicy.pipeline.compress import STAGE_CONFIGS, PipelineConfig, Stage, params_hash
from tinypolicy.pipeline.settings import (
    ADCollectConfig,
    ADEvalConfig,
    ADExportConfig,
    ADTrainConfig,
    DistillConfig,
    EvaluateConfig,
    GeneraliseConfig,
    QLearningConfig,
    StudentConfig,
    TrainConfig,
)


@pytest.mark.parametrize("cls, values, message", [
    (TrainConfig, {"total_step": 4000}, "where: unknown key total_step (known: actor_sparsity, algo,"),
    (BenchConfig, {"calls": 10, "cals": 1, "round": 2}, "where: unknown keys cals, round"),
    (TrainConfig, {"total_steps": "abc"}, "where: total_steps must be an integer, got 'abc'"),
    (TrainConfig, {"total_steps": 4000.0}, "total_steps must be an integer, got 4000.0"),
    (TrainConfig, {"total_steps": True}, "total_steps must be an integer, got True"),
    (TrainConfig, {"lr": "0.1"}, "lr must be a number, got '0.1'"),
    (TrainConfig, {"actor_sparsity": False}, "actor_sparsity must be a number, got False"),
    (TrainConfig, {"hidden": [64, "a"]}, "hidden must be a list, each an integer, got [64, 'a']"),
    (TrainConfig, {"hidden": 64}, "hidden must be a list, each an integer, got 64"),
    (TrainConfig, {"learning_starts": "x"}, "learning_starts must be an integer or none, got 'x'"),
    (ADEvalConfig, {"temperature": -1.0}, "temperature"),
    (TrainConfig, {"method": "rlx3"}, "where: unknown method 'rlx3'; choose one of dense, prune, static, set, rigl, rlx2"),
    (EmbeddedConfig, {"targets": ["cortex-m4", "cortex-m9"]}, "unknown targets 'cortex-m9'"),
    (DistillConfig, {"size": 8}, "where: env_id must be given"),
    (TrainConfig, {"env_id": "Walker2d-v5"}, "where: env_id cannot be set here"),  # the caller's (fixed)
])
def test_from_dict_refuses_bad_keys_and_values_on_one_line(cls, values, message):
    fixed = {"env_id": "Hopper-v5"} if cls is TrainConfig else {}
    with pytest.raises(UserError) as caught:
        from_dict(cls, values, "where", fixed=fixed)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_from_dict_converts_lists_to_tuples_and_ints_to_floats():
    cfg = from_dict(TrainConfig, {"hidden": [64, 64], "lr": 1, "learning_starts": None}, "where")
    assert cfg == TrainConfig(hidden=(64, 64), lr=1.0) and isinstance(cfg.lr, float)
    assert from_dict(EmbeddedConfig, {"targets": ["cortex-m4"]}, "where").targets == ("cortex-m4",)
    stored = {"lr": 0.5, "gamma": 0.9, "decay_episodes": 60}  # as a checkpoint stores it
    assert from_dict(QLearningConfig, stored, "checkpoint") == QLearningConfig(0.5, 0.9, 60)


def _parsed(argv: list[str]):
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("argv, expected", [
    (["train", "--env", "Hopper-v5", "--out", "x"], TrainConfig()),
    (["distill", "--env", "Hopper-v5", "--out", "x"], DistillConfig(env_id="Hopper-v5")),
    (["export", "ckpt", "--out", "x"], ExportConfig()),
    (["bench", "bundle"], BenchConfig()),
    (["embedded", "bundle"], EmbeddedConfig()),
    (["generalise", "dataset", "--env", "Hopper-v5"], GeneraliseConfig()),
    (["ad", "collect", "--out", "x"], ADCollectConfig()),
    (["ad", "collect", "--out", "x"], QLearningConfig()),
    (["ad", "train", "--data", "d", "--out", "x"], ADTrainConfig()),
    (["ad", "evaluate", "ckpt", "--out", "x"], ADEvalConfig()),
    (["ad", "export", "ckpt", "--out", "x"], ADExportConfig()),
])
def test_unset_flags_are_the_dataclass_defaults(argv, expected):
    args = _parsed(argv)
    fixed = {"env_id": args.env_id} if isinstance(expected, TrainConfig) else {}
    assert from_dict(type(expected), flag_values(args, type(expected)), "flags", fixed=fixed) == expected


def test_flags_parse_into_the_config():
    args = _parsed(["train", "--env", "Pendulum-v1", "--out", "x", "--steps", "4000", "--hidden", "64,32",
                    "--actor-sparsity", "0.95", "--precision", "bf16", "--seed", "7"])
    cfg = from_dict(TrainConfig, flag_values(args, TrainConfig), "flags", fixed={"env_id": args.env_id})
    assert cfg == TrainConfig(env_id="Pendulum-v1", total_steps=4000, hidden=(64, 32), actor_sparsity=0.95,
                              precision="bf16", seed=7)
    args = _parsed(["embedded", "bundle", "--target", "aarch64", "cortex-m4"])
    assert from_dict(EmbeddedConfig, flag_values(args, EmbeddedConfig), "flags").targets == ("aarch64", "cortex-m4")
    assert _parsed(["ad", "evaluate", "ckpt", "--out", "x", "--temperature", "0"]).temperature == 0


@pytest.mark.parametrize("argv, message", [
    (["embedded", "bundle", "--target", "cortex-m9"], "argument --target: invalid choice: 'cortex-m9'"),
    (["train", "--env", "E", "--out", "x", "--steps", "0"], "argument --steps: must be positive, got 0"),
    (["train", "--env", "E", "--out", "x", "--actor-sparsity", "1"],
     "argument --actor-sparsity: must be in [0, 1), got '1'"),
    (["distill", "--env", "E", "--out", "x", "--hidden", "64,x"], "argument --hidden: expected sizes like 256,256"),
    (["distill", "--out", "x"], "the following arguments are required: --env"),
])
def test_bad_flag_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        _parsed(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.endswith("(see tinypolicy " + argv[0] + " --help)\n"), err


def test_embedded_target_choices_are_the_targets():
    assert EmbeddedConfig().targets == tuple(TARGETS)
    assert _parsed(["embedded", "bundle"]).targets == tuple(TARGETS)


def test_compress_train_flags_leave_the_preset_alone_unless_given():
    assert flag_values(_parsed(["compress"]), TrainConfig) == {}
    assert flag_values(_parsed(["compress", "--steps", "10", "--lr", "0.01"]), TrainConfig) == {
        "total_steps": 10, "lr": 0.01}


def test_compress_defaults_are_the_stage_dataclasses():
    config = PipelineConfig.from_preset("Walker2d-v5", {})
    assert config.train_config() == TrainConfig(env_id="Walker2d-v5")
    assert config.distill_config(Path("ckpt.pt"), Path("actor.onnx")) == DistillConfig(
        env_id="Walker2d-v5", init="expert", expert="ckpt.pt", mode="a", arch_mask="actor.onnx")
    for stage in set(STAGE_CONFIGS) - {"train", "distill"}:
        assert config.settings(stage) == STAGE_CONFIGS[stage](), stage
    assert config.student_config() == StudentConfig()  # at the train table's sparsity and seed, the defaults


@pytest.mark.parametrize("override, message", [
    ("nosuchstage.x=1", "unknown stages ['nosuchstage'] in the --set overrides"),
    ('train.total_steps="abc"', "stage train: total_steps must be an integer, got 'abc'"),
    ("bench.calls=0.5", "stage bench: calls must be an integer, got 0.5"),
    ("embedded.targets=[\"cortex-m9\"]", "stage embedded: unknown targets 'cortex-m9'"),
    ("report.pages=2", "stage report: unknown key pages (known: none)"),
    ("train.env_id=\"Ant-v5\"", "stage train: env_id cannot be set here"),
    ("train.lr=nan", "stage train: lr: must be a positive number, got 'nan'"),
    ("train.gamma=-inf", "stage train: gamma: must be in (0, 1], got '-inf'"),
    ("distill.sigma=-1", "stage distill: sigma: must be a positive number, got '-1.0'"),
    ("evaluate.episodes=0", "stage evaluate: episodes: must be positive, got 0"),
])
def test_compress_refuses_bad_overrides_before_any_work(override, message, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("compress started working on a bad configuration")

    monkeypatch.setattr("tinypolicy.pipeline.compress.compress", no_work)
    out = tmp_path / "out"
    assert cli.main(["compress", "--preset", "tiny", "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tinypolicy: error: ") and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("saved, current, ignore, message", [
    ({"lr": 3e-4, "steps": 10}, {"lr": 3e-4, "steps": 10}, (), None),
    ({"lr": 3e-4, "steps": 10}, {"lr": 1e-3, "steps": 20}, ("steps",), "(lr: 0.0003 -> 0.001); use another --out"),
    ({"lr": 3e-4}, {"lr": 3e-4, "seed": 1}, (), "(seed: None -> 1)"),
    ({"lr": 3e-4, "gone": 1}, {"lr": 3e-4}, (), "(gone: 1 -> None)"),
    ({"a": 1, "b": 2}, {"a": 2, "b": 3}, (), "(a: 1 -> 2, b: 2 -> 3)"),
])
def test_resume_check_names_every_changed_setting(saved, current, ignore, message):
    if message is None:
        refuse_other_settings(saved, current, "runs/x", ignore=ignore)
        return
    with pytest.raises(UserError) as caught:
        refuse_other_settings(saved, current, "runs/x", ignore=ignore)
    assert str(caught.value).startswith("runs/x holds a run with other settings ") and message in str(caught.value)


@pytest.mark.parametrize("cls, values, message", [
    (TrainConfig, {"lr": float("nan")}, "where: lr: must be a positive number, got 'nan'"),
    (TrainConfig, {"lr": -1}, "where: lr: must be a positive number, got '-1.0'"),
    (TrainConfig, {"lr": float("inf")}, "where: lr: must be a positive number, got 'inf'"),
    (TrainConfig, {"gamma": 1.5}, "where: gamma: must be in (0, 1], got '1.5'"),
    (TrainConfig, {"tau": 0}, "where: tau: must be in (0, 1], got '0.0'"),
    (TrainConfig, {"policy_noise": -0.1}, "where: policy_noise: must be in [0, inf), got '-0.1'"),
    (TrainConfig, {"batch_size": 0}, "where: batch_size: must be positive, got 0"),
    (TrainConfig, {"learning_starts": -1}, "where: learning_starts: must be zero or more, got -1"),
    (TrainConfig, {"actor_sparsity": 1.0}, "where: actor_sparsity: must be in [0, 1), got '1.0'"),
    (TrainConfig, {"hidden": []}, "where: hidden: expected sizes like 256,256, got ''"),
    (DistillConfig, {"env_id": "E", "sigma": float("nan")}, "where: sigma: must be a positive number"),
    (DistillConfig, {"env_id": "E", "bc_lr": 0}, "where: bc_lr: must be a positive number"),
    (ADTrainConfig, {"dropout": 1.0}, "where: dropout: must be in [0, 1), got '1.0'"),
    (ADTrainConfig, {"warmup": -5}, "where: warmup: must be zero or more, got -5"),
    (QLearningConfig, {"lr": 0}, "where: lr: must be in (0, 1], got '0.0'"),
    (ADEvalConfig, {"ablation_window": 0}, "where: ablation_window: must be positive, got 0"),
    (ExportConfig, {"parity_samples": -5}, "where: parity_samples: must be positive, got -5"),
    (BenchConfig, {"calls": 0}, "where: calls: must be positive, got 0"),
    (EvaluateConfig, {"episodes": 0}, "where: episodes: must be positive, got 0"),
    (GeneraliseConfig, {"seeds": -1}, "where: seeds: must be positive, got -1"),
    (TrainConfig, {"seed": -1}, "where: seed: must be in [0, 4294967295], got -1"),  # NumPy refuses it
    (ADEvalConfig, {"seed": 2**64}, "where: seed: must be in [0, 4294967295]"),     # torch overflows
    (EvaluateConfig, {"seed": -3}, "where: seed: must be in [0, 4294967295], got -3"),
])
def test_from_dict_refuses_values_outside_a_settings_range(cls, values, message):
    """Presets, --set and stored configs get the range checks the command-line flags get."""
    with pytest.raises(UserError) as caught:
        from_dict(cls, values, "where")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)


def test_range_checks_accept_the_edges_a_setting_allows():
    cfg = from_dict(TrainConfig, {"learning_starts": 0, "policy_noise": 0, "gamma": 1, "seed": 2**32 - 1,
                                  "actor_sparsity": 0}, "where")
    assert (cfg.learning_starts, cfg.policy_noise, cfg.gamma, cfg.seed) == (0, 0.0, 1.0, 2**32 - 1)
    assert from_dict(ADTrainConfig, {"dropout": 0, "warmup": 0}, "where").dropout == 0.0
    with pytest.raises(UserError, match="train: gamma: must be in"):
        TrainConfig(gamma=2.0).validate()  # a config built in Python is checked by the stage
    with pytest.raises(UserError, match="distill: sigma: must be a positive number"):
        DistillConfig(env_id="E", sigma=-1.0)


def _numeric_flags(parser: argparse.ArgumentParser, command: tuple[str, ...] = ()):
    """(subcommand words, action) of every flag of every command that parses a number."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _numeric_flags(sub, (*command, name))
        elif action.option_strings and action.type not in (None, str, Path) and action.choices is None:
            yield command, action


NUMERIC_FLAGS = list(_numeric_flags(cli.build_parser()))


def test_every_command_has_its_numeric_flags_checked():
    commands = {" ".join(command) for command, _ in NUMERIC_FLAGS}
    assert commands >= {"train", "evaluate", "compress", "export", "bench", "distill", "generalise", "retrain",
                        "ad collect", "ad train", "ad evaluate", "ad export"}
    assert len(NUMERIC_FLAGS) > 50


@pytest.mark.parametrize("command, action", NUMERIC_FLAGS,
                         ids=[f"{' '.join(c)} {a.option_strings[-1]}" for c, a in NUMERIC_FLAGS])
def test_every_numeric_flag_refuses_nan_inf_and_negatives(command, action, capsys):
    flag = action.option_strings[-1]
    for value in ("nan", "inf", "-1"):
        with pytest.raises(SystemExit) as caught:
            cli.build_parser().parse_args([*command, flag, value])
        assert caught.value.code == 2
        assert f"argument {' / '.join(action.option_strings)}: " in capsys.readouterr().err, (flag, value)


def test_a_stamp_older_than_a_setting_matches_when_that_setting_is_at_its_default(tmp_path):
    """A compress folder trained before a setting existed (prune_start, added with --method
    prune) is the same work as long as the new setting keeps its default; changing it is a
    conflict named by setting."""
    defaults = {"lr": 3e-4, "prune_start": 0.2}
    old_stamp = {"params": params_hash({"lr": 3e-4}), "settings": {"lr": 3e-4}}
    same = Stage("train", {"lr": 3e-4, "prune_start": 0.2}, [], [], lambda folder: {}, defaults=defaults)
    assert same.same_params(old_stamp)
    other = Stage("train", {"lr": 3e-4, "prune_start": 0.5}, [], [], lambda folder: {}, defaults=defaults)
    assert not other.same_params(old_stamp)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "stamp.json").write_text(json.dumps(old_stamp))
    (tmp_path / "train" / "metrics.csv").write_text("step\n")
    assert other.conflicts(tmp_path) == ["prune_start: 0.2 -> 0.5"]
    assert same.conflicts(tmp_path) == []
