"""On-device retraining: the NumPy BC trainer's math, its ONNX output, masks, bad inputs,
and that the retrain path runs with torch, gymnasium and mujoco impossible to import."""
from __future__ import annotations

import ast
import json
import shutil
import statistics
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.builders import mask_onnx, synthetic_dataset
from tests.conftest import ROOT
from tinypolicy.ondevice.dataset import ACTIVATIONS, BCRecipe, load_dataset, save_dataset
from tinypolicy.ondevice.onnx_mlp import read_policy_onnx
from tinypolicy.ondevice.retrain import (
    MLPParams,
    _FlatLayout,
    init_params,
    loss_and_grad,
    policy_mean,
    retrain,
    train_bc,
)

# What a robot copies: the ondevice/ folder, exactly (ondevice/__init__.py says the same).
ROBOT_FOLDER = ROOT / "ondevice"
ROBOT_FILES = sorted(path.name for path in ROBOT_FOLDER.glob("*.py"))
BLOCKED = ("torch", "gymnasium", "mujoco")
BLOCKER = f"""
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not installed on this robot")

sys.meta_path.insert(0, _Blocked())
"""


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    save_dataset(synthetic_dataset(np.random.default_rng(0)), tmp_path / "dataset")
    return tmp_path / "dataset"


def _run(*args, cwd=ROOT, block=None) -> subprocess.CompletedProcess:
    env = None
    if block is not None:
        block.mkdir(exist_ok=True)
        (block / "sitecustomize.py").write_text(BLOCKER)
        env = {"PYTHONPATH": str(block), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("activation", ACTIVATIONS)  # every activation a dataset recipe may name
def test_gradient_matches_finite_differences(activation):
    rng = np.random.default_rng(0)
    data = synthetic_dataset(rng, size=16)
    sizes = [11, 12, 8, 3]
    init = init_params(sizes, seed=0)
    layout = _FlatLayout(sizes, 3)
    flat = layout.pack(MLPParams([3 * w for w in init.weights], [rng.normal(size=b.shape) for b in init.biases],
                                 rng.normal(size=3) * 0.3), np.float64)
    states, actions = data.states.astype(np.float64), data.actions.astype(np.float64)
    grad = np.zeros_like(flat)
    loss_and_grad(layout.views(flat), activation, states, actions, layout.views(grad))
    numeric = np.empty_like(flat)
    for i in range(len(flat)):
        up, down = flat.copy(), flat.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        numeric[i] = (loss_and_grad(layout.views(up), activation, states, actions)
                      - loss_and_grad(layout.views(down), activation, states, actions)) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_an_unknown_activation_is_refused_rather_than_trained_as_elu():
    data = synthetic_dataset(np.random.default_rng(0), size=4)
    params = init_params([11, 8, 3], seed=0)
    with pytest.raises(ValueError, match="unknown hidden activation 'gelu'"):
        policy_mean(params, "gelu", data.states)
    with pytest.raises(ValueError, match="unknown hidden activation 'gelu'"):
        loss_and_grad(params, "gelu", data.states, data.actions)


@pytest.mark.parametrize("activation, masked", [("tanh", False), ("relu", False), ("elu", False), ("tanh", True),
                                                ("elu", True)])
def test_loss_curve_matches_the_torch_inner_loop(activation, masked):
    """The HaDES trainer (models/bc.py) and the NumPy one, from the same init on the same data,
    dense and with a fixed sparse topology (as distillation trains the exported actor's)."""
    from tinypolicy.models.bc import BCParams
    from tinypolicy.models.bc import policy_mean as torch_policy_mean
    from tinypolicy.models.bc import train_bc as torch_train_bc

    data = synthetic_dataset(np.random.default_rng(0))
    recipe = BCRecipe(hidden=(64, 64), activation=activation, steps=100)
    rng = np.random.default_rng(7)
    masks = [rng.random((o, i)) < 0.3 for i, o in zip([11, 64, 64], [64, 64, 3])] if masked else None
    init = init_params([11, 64, 64, 3], seed=1, masks=masks)
    trained, losses = train_bc(data.states, data.actions, recipe, init, masks)

    as_population = lambda arrays: [torch.tensor(a)[None] for a in arrays]
    torch_init = BCParams(as_population(init.weights), as_population(init.biases), torch.tensor(init.log_std)[None])
    torch_trained, torch_losses = torch_train_bc(torch.tensor(data.states), torch.tensor(data.actions), torch_init,
                                                 recipe.steps, recipe.lr, activation, recipe.adam_eps,
                                                 recipe.grad_clip, [torch.tensor(m) for m in masks] if masked else None)
    if masked:
        for w, t, m in zip(trained.weights, torch_trained.weights, masks):
            assert np.all(w[~m] == 0) and torch.all(t[0][~torch.tensor(m)] == 0)
    # The NLL crosses zero while training, so relative to the curve's scale, not pointwise.
    np.testing.assert_allclose(losses, torch_losses[0].numpy(), rtol=1e-4, atol=1e-4 * np.abs(losses).max())
    assert losses[-1] < 0.5 * losses[0]
    # Float rounding differs (a ReLU unit near its kink, Adam on tiny second moments), so
    # the trained policies are compared by their outputs rather than weight by weight.
    torch_mu = torch_policy_mean(torch_trained, torch.tensor(data.states)[None], activation)[0].numpy()
    np.testing.assert_allclose(policy_mean(trained, activation, data.states), torch_mu, atol=1e-3)
    np.testing.assert_allclose(trained.log_std, torch_trained.log_std[0].numpy(), atol=1e-4)


def test_masked_training_matches_torch_adam_on_masked_gradients():
    """With a fixed mask: torch.optim.Adam and clip_grad_norm_ on gradients zeroed outside
    the mask (as models.sparse trains) give the same curve, and the zeros stay exact."""
    rng = np.random.default_rng(0)
    data = synthetic_dataset(rng)
    recipe = BCRecipe(hidden=(32, 32), activation="relu", steps=100)
    sizes = [11, 32, 32, 3]
    masks = [rng.random((o, i)) < 0.3 for i, o in pairwise(sizes)]
    init = init_params(sizes, seed=1, masks=masks)
    trained, losses = train_bc(data.states, data.actions, recipe, init, masks)

    weights = [torch.tensor(w, requires_grad=True) for w in init.weights]
    biases = [torch.tensor(b, requires_grad=True) for b in init.biases]
    log_std = torch.zeros(3, requires_grad=True)
    params = weights + biases + [log_std]
    optimiser = torch.optim.Adam(params, lr=recipe.lr, eps=recipe.adam_eps)
    states, actions = torch.tensor(data.states), torch.tensor(data.actions)
    torch_losses = []
    for _ in range(recipe.steps):
        h = states
        for w, b in zip(weights[:-1], biases[:-1]):
            h = torch.relu(h @ w.T + b)
        mu = h @ weights[-1].T + biases[-1]
        loss = -torch.distributions.Normal(mu, log_std.exp()).log_prob(actions).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        for w, m in zip(weights, masks):
            w.grad *= torch.tensor(m)
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        optimiser.step()
        torch_losses.append(loss.item())
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-4, atol=1e-4 * np.abs(losses).max())
    for ours, theirs, mask in zip(trained.weights, weights, masks):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=1e-4)
        assert np.all(ours[~mask] == 0) and np.all(ours[mask] != 0)


def test_onnx_policy_equals_numpy_forward_pass(tmp_path, dataset_dir):
    summary = retrain(dataset_dir, tmp_path / "policy.onnx", hidden=(64, 64), activation="tanh", seed=3)
    dataset = load_dataset(dataset_dir)
    recipe = BCRecipe(hidden=(64, 64), activation="tanh")
    sizes = [dataset.obs_dim, 64, 64, dataset.act_dim]
    params, losses = train_bc(dataset.states, dataset.actions, recipe, init_params(sizes, seed=3))
    assert summary["final_loss"] < summary["initial_loss"] == pytest.approx(losses[0])

    obs = np.random.default_rng(1).normal(size=(256, dataset.obs_dim)).astype(np.float32) * 3
    session = ort.InferenceSession(str(tmp_path / "policy.onnx"), providers=["CPUExecutionProvider"])
    (onnx_actions,) = session.run(None, {"obs": obs})
    numpy_actions = dataset.to_env_units(policy_mean(params, "tanh", dataset.normalise(obs)))
    np.testing.assert_allclose(onnx_actions, numpy_actions, atol=2e-5)
    assert np.all((onnx_actions >= dataset.action_low - 1e-6) & (onnx_actions <= dataset.action_high + 1e-6))

    _, _, metadata = read_policy_onnx(tmp_path / "policy.onnx")
    assert metadata["env_id"] == "Hopper-v5" and metadata["dataset_sha256"] == dataset.sha256
    assert (metadata["obs_dim"], metadata["act_dim"], metadata["hidden"]) == ("11", "3", "64,64")
    np.testing.assert_allclose(json.loads(metadata["action_high"]), dataset.action_high, rtol=1e-6)


def test_mask_keeps_the_exported_actors_topology(tmp_path, dataset_dir):
    masks = mask_onnx(tmp_path / "actor.onnx", [11, 48, 24, 3])
    summary = retrain(dataset_dir, tmp_path / "policy.onnx", mask_path=tmp_path / "actor.onnx")
    weights, _, metadata = read_policy_onnx(tmp_path / "policy.onnx")
    assert summary["hidden"] == [48, 24] and summary["activation"] == "tanh"
    for w, m in zip(weights, masks):
        assert w.shape == m.shape
        assert np.all(w[~m] == 0) and np.count_nonzero(w) == np.count_nonzero(m)
    expected = 1 - sum(m.sum() for m in masks) / sum(m.size for m in masks)
    assert float(metadata["sparsity"]) == pytest.approx(expected, abs=1e-6)
    assert summary["final_loss"] < summary["initial_loss"]


def test_init_file_starts_training_where_the_torch_inner_loop_starts(tmp_path, dataset_dir):
    """A HaDES-F policy_init.npz (as models.bc writes it): retraining from it follows the torch
    inner loop from the same init, so the robot gets the policy the dataset was distilled for."""
    from tinypolicy.models.bc import gaussian_nll
    from tinypolicy.models.bc import init_params as torch_init_params
    from tinypolicy.models.bc import train_bc as torch_train_bc

    dataset = load_dataset(dataset_dir)
    torch_init = torch_init_params(1, 11, 3, (32, 16), seed=420)
    np.savez(tmp_path / "policy_init.npz", **{k: v[0] for k, v in torch_init.numpy().items()})
    summary = retrain(dataset_dir, tmp_path / "policy.onnx", init_path=tmp_path / "policy_init.npz")
    trained, losses = torch_train_bc(torch.tensor(dataset.states), torch.tensor(dataset.actions), torch_init,
                                     200, 5e-3, "tanh")
    assert summary["hidden"] == [32, 16]
    assert summary["initial_loss"] == pytest.approx(float(losses[0, 0]), rel=1e-5)
    final = gaussian_nll(trained, torch.tensor(dataset.states)[None], torch.tensor(dataset.actions)[None], "tanh")
    assert summary["final_loss"] == pytest.approx(float(final[0]), abs=1e-3)
    weights, _, _ = read_policy_onnx(tmp_path / "policy.onnx")
    for ours, theirs in zip(weights, trained.weights):
        np.testing.assert_allclose(ours, theirs[0].numpy(), atol=1e-3)


def test_robot_copy_runs_without_torch_gymnasium_or_mujoco(tmp_path, dataset_dir):
    """The ondevice/ folder alone, copied into a directory of its own, with the heavy packages
    unimportable and tinypolicy not installed on the path."""
    robot = tmp_path / "robot"
    shutil.copytree(ROBOT_FOLDER, robot / "ondevice", ignore=shutil.ignore_patterns("__pycache__"))
    mask_onnx(tmp_path / "actor.onnx", [11, 64, 64, 3])
    probe = ("import runpy, sys; sys.argv = ['retrain', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('ondevice.retrain', run_name='__main__')\n"
             "except SystemExit as exit:\n    code = exit.code\n"
             "print(sorted(f'{m}={getattr(sys.modules[m], \"__file__\", None)}' for m in sys.modules "
             "if m.split('.')[0] in ('tinypolicy', 'ondevice', *" + repr(BLOCKED) + ")), file=sys.stderr)\n"
             "sys.exit(code)")
    result = _run("-c", probe, str(dataset_dir), "--out", str(tmp_path / "policy.onnx"),
                  "--mask", str(tmp_path / "actor.onnx"), cwd=robot, block=tmp_path / "block")
    assert result.returncode == 0, result.stderr
    loaded = result.stderr.strip().splitlines()[-1]
    assert all(blocked not in loaded for blocked in BLOCKED), loaded
    assert "tinypolicy" not in loaded, loaded
    # ondevice.retrain itself runs as __main__; every other module of the folder comes from the copy.
    assert str(ROOT) not in loaded and loaded.count(str(robot)) == len(ROBOT_FILES) - 1, loaded
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["onnx_max_abs_diff"] < 1e-4 and summary["sparsity"] > 0.5

    # The development-side CLI takes the same path.
    result = _run("-m", "tinypolicy", "retrain", str(dataset_dir), "--out", str(tmp_path / "cli.onnx"),
                  "--steps", "50", block=tmp_path / "block")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 50


def test_robot_folder_imports_only_itself_and_light_packages():
    """Statically, lazy imports included: the robot's folder imports its own modules by
    relative import, the standard library, numpy, onnx and (optionally) onnxruntime."""
    for name in ROBOT_FILES:
        for node in ast.walk(ast.parse((ROBOT_FOLDER / name).read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported = [node.module]
            else:
                continue
            for module in imported:
                top = module.split(".")[0]
                assert top in sys.stdlib_module_names or top in ("numpy", "onnx", "onnxruntime"), (name, module)


def test_blocker_really_blocks(tmp_path):
    result = _run("-c", "import torch", block=tmp_path / "block")
    assert result.returncode != 0 and "not installed on this robot" in result.stderr


def _bad_inputs(tmp_path, dataset_dir):
    other_dims = tmp_path / "dims"
    save_dataset(synthetic_dataset(np.random.default_rng(2), obs_dim=17, act_dim=6), other_dims)
    truncated = tmp_path / "truncated"
    shutil.copytree(dataset_dir, truncated)
    npz = truncated / "dataset.npz"
    npz.write_bytes(npz.read_bytes()[:-100])
    mask_onnx(tmp_path / "walker.onnx", [17, 32, 6], env_id="Walker2d-v5")
    mask_onnx(tmp_path / "cheetah.onnx", [17, 32, 6], env_id="HalfCheetah-v5")
    mask_onnx(tmp_path / "hopper.onnx", [11, 32, 3])
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    init = init_params([17, 8, 6], seed=0)
    np.savez(tmp_path / "init17.npz", w0=init.weights[0], b0=init.biases[0], w1=init.weights[1],
             b1=init.biases[1], log_std=init.log_std)
    np.savez(tmp_path / "init_no_log_std.npz", w0=init.weights[0], b0=init.biases[0])
    return {
        "missing dataset": [str(tmp_path / "nowhere")],
        "truncated dataset": [str(truncated)],
        "mask for another env, same dims": [str(other_dims), "--mask", str(tmp_path / "cheetah.onnx")],
        "mask with other dims": [str(other_dims), "--mask", str(tmp_path / "hopper.onnx")],
        "mask for another env, other dims": [str(dataset_dir), "--mask", str(tmp_path / "walker.onnx")],
        "corrupt mask": [str(dataset_dir), "--mask", str(tmp_path / "garbage.onnx")],
        "missing mask": [str(dataset_dir), "--mask", str(tmp_path / "none.onnx")],
        "hidden differs from mask": [str(dataset_dir), "--mask", str(tmp_path / "hopper.onnx"), "--hidden", "64,64"],
        "init with other dims": [str(dataset_dir), "--init", str(tmp_path / "init17.npz")],
        "init without log_std": [str(other_dims), "--init", str(tmp_path / "init_no_log_std.npz")],
        "init not an npz": [str(dataset_dir), "--init", str(tmp_path / "garbage.onnx")],
        "init and mask": [str(other_dims), "--init", str(tmp_path / "init17.npz"), "--mask",
                          str(tmp_path / "cheetah.onnx")],
    }


def test_bad_datasets_and_masks_are_refused_on_one_line(tmp_path, dataset_dir, capsys):
    from tinypolicy.pipeline.cli import main

    cases = _bad_inputs(tmp_path, dataset_dir)
    for case, args in cases.items():
        assert main(["retrain", *args, "--out", str(tmp_path / "out.onnx")]) == 2, case
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("tinypolicy: error: "), (case, err)
        assert not (tmp_path / "out.onnx").exists(), case
    # The real exit status, from a process; and a bad flag value.
    result = _run("-m", "tinypolicy.ondevice.retrain", *cases["truncated dataset"], "--out", str(tmp_path / "out.onnx"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "truncated" in result.stderr
    result = _run("-m", "tinypolicy", "retrain", str(dataset_dir), "--out", str(tmp_path / "x.onnx"), "--lr", "nan")
    assert result.returncode == 2 and "positive" in result.stderr


def test_64_64_tanh_on_64_pairs_trains_in_well_under_a_second():
    data = synthetic_dataset(np.random.default_rng(0))
    recipe = BCRecipe(hidden=(64, 64), activation="tanh")
    init = init_params([11, 64, 64, 3], seed=0)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        train_bc(data.states, data.actions, recipe, init)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 1.0, times


def _inputs(tmp_path, dataset_dir) -> dict[str, Path]:
    mask_onnx(tmp_path / "mask.onnx", [11, 32, 3])
    init = init_params([11, 8, 3], seed=0)
    np.savez(tmp_path / "init.npz", w0=init.weights[0], b0=init.biases[0], w1=init.weights[1],
             b1=init.biases[1], log_std=init.log_std)
    return {"npz": dataset_dir / "dataset.npz", "json": dataset_dir / "dataset.json",
            "mask": tmp_path / "mask.onnx", "init": tmp_path / "init.npz"}


@pytest.mark.parametrize("case, out, flags, message", [
    ("the dataset file", "npz", [], "is also an input"),
    ("the dataset description", "json", [], "is also an input"),
    ("the dataset file, by another spelling", "npz/../dataset/dataset.npz", [], "is also an input"),
    ("the dataset folder", "folder", [], "is a folder; give a file name"),
    ("the mask", "mask", ["--mask", "mask"], "is also an input"),
    ("the init", "init", ["--init", "init"], "is also an input"),
])
def test_out_that_is_an_input_is_refused_and_every_input_kept(case, out, flags, message, tmp_path, dataset_dir,
                                                             capsys):
    from tinypolicy.pipeline.cli import main

    files = _inputs(tmp_path, dataset_dir)
    before = {name: path.read_bytes() for name, path in files.items()}
    first, _, rest = out.partition("/")
    target = dataset_dir if first == "folder" else files[first].parent / rest if rest else files[first]
    args = [str(dataset_dir), "--out", str(target), *(str(files.get(f, f)) for f in flags)]
    assert main(["retrain", *args]) == 2, case
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(target) in err, (case, err)
    assert {name: path.read_bytes() for name, path in files.items()} == before, case
    assert sorted(p.name for p in dataset_dir.iterdir()) == ["dataset.json", "dataset.npz"], case


@pytest.mark.parametrize("given, problem", [
    ("typo_name", "does not exist"),                    # inside the dataset folder: no fallback to it
    ("dataset.npz/typo", "does not exist"),
    ("renamed.npz", "is a file of another name"),
])
def test_a_wrong_dataset_path_is_refused_naming_the_path_given(given, problem, tmp_path, dataset_dir, capsys):
    from tinypolicy.pipeline.cli import main

    shutil.copy(dataset_dir / "dataset.npz", dataset_dir / "renamed.npz")
    path = dataset_dir / given
    assert main(["retrain", str(path), "--out", str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err
    assert err == (f"tinypolicy: error: dataset {path} {problem}; expected a folder holding dataset.npz and "
                   "dataset.json, or one of those files\n")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("main_module, prog", [("tinypolicy.pipeline.cli", "tinypolicy"),
                                               ("tinypolicy.ondevice.retrain", "retrain")])
def test_a_full_disk_is_one_line_and_leaves_the_old_policy(main_module, prog, tmp_path, dataset_dir, monkeypatch,
                                                           capsys):
    import errno
    import importlib

    from tinypolicy.ondevice import onnx_mlp

    out = tmp_path / "policy.onnx"
    out.write_bytes(b"the policy from yesterday")
    real = onnx_mlp.atomic_write

    def full_disk(path, write):
        def half(tmp):
            tmp.write_bytes(b"half a policy")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, half)

    monkeypatch.setattr(onnx_mlp, "atomic_write", full_disk)
    argv = ["retrain"] * (prog == "tinypolicy") + [str(dataset_dir), "--out", str(out), "--steps", "5"]
    assert importlib.import_module(main_module).main(argv) == 1
    assert capsys.readouterr().err == f"{prog}: error: {out}: No space left on device\n"
    assert out.read_bytes() == b"the policy from yesterday"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "policy.onnx"]


@pytest.mark.parametrize("key, value", [("lr", float("nan")), ("adam_eps", -1.0), ("grad_clip", float("inf")),
                                        ("steps", 0)])
def test_a_dataset_recipe_outside_its_range_is_refused_when_read(key, value, dataset_dir):
    """dataset.json's hash check covers dataset.npz only; its recipe is checked as it is read."""
    from tinypolicy.ondevice.errors import UserError

    info = json.loads((dataset_dir / "dataset.json").read_text())
    info["recipe"][key] = value
    (dataset_dir / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=r"dataset.json: invalid BC recipe \(BC steps, learning rate, Adam eps and "
                                        r"gradient clip must be positive and finite\)"):
        load_dataset(dataset_dir)
