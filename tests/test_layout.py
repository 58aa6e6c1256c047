"""The package layout: one installed package `tinypolicy`, the import-linter layering, ruff clean, no
function-level imports that hide a cycle, and artefacts that name no module.

The repository keeps ondevice/, models/, export/ and pipeline/ at its top, installed as
`tinypolicy.ondevice` ... (pyproject.toml's package-dir). These tests check the installed
view, not the folders: from outside the repository `import models` must fail.
"""
from __future__ import annotations

import ast
import configparser
import json
import os
import pickletools
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.ondevice.dataset import Dataset, load_dataset, save_dataset
from tinypolicy.pipeline.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("ondevice", "models", "export", "pipeline")  # folder name == subpackage name under tinypolicy
PACKAGE_DIRS = ("tinypolicy", *MAPPED)
BIN = Path(sys.executable).parent

# Function-level imports of tinypolicy modules that are deliberate, with the reason. Anything
# else is hoisted to the module top, where import-linter sees it and a cycle fails loudly.
LAZY_IMPORT_EXCEPTIONS = {
    "pipeline/cli.py": "each command imports its stage when it runs: `tinypolicy retrain` must work "
                       "where torch is not installed, and `--help` stays fast",
}


def _env(**extra: str) -> dict[str, str]:
    # An inherited PYTHONPATH could put the repository itself on the path and hide a layout bug.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | extra


def _python_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


# ------------------------------------------------------------------ import-linter contract

def _stage(tmp_path: Path) -> Path:
    """The installed layout as folders: grimp walks the root package's folder on disk and
    does not follow setuptools' package-dir, so the mapped folders are copied into it."""
    stage = tmp_path / "stage"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "tinypolicy", stage / "tinypolicy", ignore=ignore)
    for name in MAPPED:
        shutil.copytree(ROOT / name, stage / "tinypolicy" / name, ignore=ignore)
    return stage


def _lint_imports(stage: Path) -> subprocess.CompletedProcess:
    script = BIN / "lint-imports"
    command = [str(script)] if script.exists() else \
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.exit(lint_imports_command())"]
    return subprocess.run([*command, "--no-cache", "--no-logo", str(ROOT / ".importlinter")], cwd=stage,
                          env=_env(PYTHONPATH=str(stage)), capture_output=True, text=True, timeout=120)


def _contracts() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    assert config.read(ROOT / ".importlinter"), ".importlinter is missing"
    return config


def test_import_linter_contracts_are_kept(tmp_path):
    result = _lint_imports(_stage(tmp_path))
    output = result.stdout + result.stderr
    contracts = sum(1 for s in _contracts().sections() if s.startswith("importlinter:contract:"))
    assert result.returncode == 0, output
    assert f"Contracts: {contracts} kept, 0 broken." in output, output


def test_ruff_finds_nothing():
    """The code passes ruff's default rules at the pinned version (pyproject names the few broken on purpose)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                             str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_import_linter_sees_the_mapped_folders(tmp_path):
    """A robot module importing torch and the export layer must break every contract (each
    reaches ondevice); if the staged subpackages were not analysed, the check above would
    pass vacuously."""
    stage = _stage(tmp_path)
    with (stage / "tinypolicy" / "ondevice" / "errors.py").open("a") as f:
        f.write("\nimport torch\nimport tinypolicy.export\n")
    result = _lint_imports(stage)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    contracts = sum(1 for s in _contracts().sections() if s.startswith("importlinter:contract:"))
    assert f"0 kept, {contracts} broken" in output, output


def test_import_linter_layers_name_every_core_module():
    layers = _contracts()["importlinter:contract:layers"]["layers"]
    named = {name.strip().strip("()") for line in layers.splitlines() for name in re.split(r"[|:]", line)}
    core = {p.stem for p in (ROOT / "tinypolicy").glob("*.py")} - {"__init__", "__main__"}
    subpackages = {p.parent.name for p in (ROOT / "tinypolicy").glob("*/__init__.py")}
    missing = sorted(f"tinypolicy.{m}" for m in core | subpackages | set(MAPPED) if f"tinypolicy.{m}" not in named)
    assert core and not missing, f"not in .importlinter's layers: {missing}"


# ------------------------------------------------------------------ what is importable

def test_only_the_tinypolicy_package_is_importable(tmp_path):
    probe = ("import importlib, json\n"
             "out = {}\n"
             "for name in ('models', 'pipeline', 'export', 'ondevice', 'benchmarks'):\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "        out[name] = 'imported'\n"
             "    except ModuleNotFoundError as exc:\n"
             "        out[name] = exc.name\n"
             "print(json.dumps(out))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {name: name for name in ("models", "pipeline", "export", "ondevice", "benchmarks")}

    result = subprocess.run([sys.executable, "-c", "import tinypolicy.models, tinypolicy.pipeline.cli, "
                             "tinypolicy.export.bundle, tinypolicy.ondevice.retrain"],
                            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [[sys.executable, "-m", "tinypolicy"], [str(BIN / "tinypolicy")]],
                         ids=["python -m tinypolicy", "console script"])
def test_command_line_help(tmp_path, command):
    result = subprocess.run([*command, "--help"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "retrain" in result.stdout and "compress" in result.stdout


# ------------------------------------------------------------------ the wheel

def test_wheel_holds_only_the_tinypolicy_package(tmp_path):
    # Built from a copy of the working tree without build outputs: what a fresh checkout
    # builds, and no build/ or egg-info left in the repository.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".import_linter_cache",
        "artifacts", "runs"))
    assert (source / "benchmarks").is_dir() and (source / "tests").is_dir()
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(tmp_path / "wheel")], cwd=source,
                            env=_env(PIP_DISABLE_PIP_VERSION_CHECK="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheel").glob("tinypolicy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    outside = [n for n in names if not re.match(r"tinypolicy/|tinypolicy-[^/]+\.dist-info/", n)]
    assert not outside, f"files outside the tinypolicy package: {outside}"
    required = {"tinypolicy/pipeline/presets.toml", "tinypolicy/export/c_timer.c", "tinypolicy/pipeline/cli.py",
                "tinypolicy/ondevice/retrain.py", "tinypolicy/models/__init__.py"}
    required |= {f"tinypolicy/export/embedded_c/{p.name}" for p in (ROOT / "export" / "embedded_c").iterdir()
                 if p.is_file()}
    assert required - set(names) == set(), f"missing from the wheel: {sorted(required - set(names))}"
    leaked = [n for n in names if re.search(r"(^|/)(benchmarks|tests)/|sb3_reference|(^|/)test_[^/]*\.py$", n)]
    assert not leaked, f"benchmark or test code in the wheel: {leaked}"
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["tinypolicy"]


# ------------------------------------------------------------------ imports inside functions

def _function_level_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def _ours(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or node.module.split(".")[0] == "tinypolicy"
    return any(alias.name.split(".")[0] == "tinypolicy" for alias in node.names)


def test_no_tinypolicy_import_inside_a_function():
    offenders, excepted = set(), set()
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        for node in _function_level_imports(ast.parse(path.read_text(), rel)):
            if _ours(node):
                (excepted if rel in LAZY_IMPORT_EXCEPTIONS else offenders).add(f"{rel}:{node.lineno}")
    assert not offenders, ("imports of tinypolicy modules inside functions (hoist them to the module top, "
                           f"or add the file to LAZY_IMPORT_EXCEPTIONS with the reason): {sorted(offenders)}")
    # An exception nothing needs any more is removed, so the list stays the list of reasons.
    stale = set(LAZY_IMPORT_EXCEPTIONS) - {e.split(":")[0] for e in excepted}
    assert not stale, f"LAZY_IMPORT_EXCEPTIONS lists files without lazy tinypolicy imports: {sorted(stale)}"


def test_no_import_by_folder_name():
    """`import models` works in the repository root only by accident of the working directory;
    an installed tinypolicy has no such module."""
    bad = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in modules
                    if m.split(".")[0] in (*MAPPED, "benchmarks")]
    assert not bad, bad


# ------------------------------------------------------------------ artefacts name no module

def _pickle_globals(data: bytes) -> set[str]:
    """'module name' of every global a pickle references (GLOBAL, and STACK_GLOBAL's two strings)."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            found.add(arg)
        elif isinstance(arg, str):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(" ".join(strings[-2:]))
    return found


def test_checkpoint_references_only_torch_and_collections(tmp_path):
    trainer = Trainer(TrainConfig(env_id="Pendulum-v1", algo="sac", hidden=(16, 16), batch_size=8,
                                  total_steps=5000, learning_starts=16), tmp_path)
    try:
        trainer.reset_env()
        for _ in range(40):  # past learning_starts: optimiser state is saved too
            trainer.env_step()
        assert trainer.critic_updates > 0
        trainer.save()
    finally:
        trainer.env.close()
    path = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(path) as archive:
        (pkl,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        referenced = _pickle_globals(archive.read(pkl))
    assert "collections OrderedDict" in referenced  # the scan does see the state dicts
    foreign = sorted(g for g in referenced if g.split()[0].split(".")[0] not in ("torch", "collections"))
    assert not foreign, f"checkpoint pickle references {foreign}: a moved module would break old checkpoints"
    actor = load_checkpoint(path).build_actor()  # weights_only=True, as for every checkpoint
    assert sum(p.numel() for p in actor.parameters()) > 0


def test_dataset_is_plain_arrays(tmp_path):
    rng = np.random.default_rng(0)
    dataset = Dataset("Hopper-v5", rng.normal(size=(8, 11)), rng.normal(size=(8, 3)), obs_mean=np.zeros(11),
                      obs_std=np.ones(11), action_low=-np.ones(3), action_high=np.ones(3))
    npz = save_dataset(dataset, tmp_path / "dataset")
    with np.load(npz, allow_pickle=False) as arrays:  # raises on any pickled (object) member
        assert sorted(arrays.files) == sorted(["states", "actions", "obs_mean", "obs_std", "action_low",
                                               "action_high"])
        assert all(arrays[name].dtype == np.float32 for name in arrays.files)
    loaded = load_dataset(tmp_path / "dataset", env_id="Hopper-v5")
    np.testing.assert_array_equal(loaded.states, dataset.states)


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def test_artefact_readers_refuse_pickles():
    """Every artefact tinypolicy reads is loaded without unpickling code: torch.load with
    weights_only=True and np.load with allow_pickle=False, and nothing imports pickle."""
    bad = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name, keywords = _call_name(node), {k.arg: k.value for k in node.keywords}
                required = {"torch.load": "weights_only", "np.load": "allow_pickle", "numpy.load": "allow_pickle"}
                if name in required:
                    value = keywords.get(required[name])
                    wanted = name == "torch.load"
                    if not (isinstance(value, ast.Constant) and value.value is wanted):
                        bad.append(f"{rel}:{node.lineno} {name} without {required[name]}={wanted}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [f"{rel}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] in ("pickle", "dill",
                                                                                                   "cloudpickle")]
    assert not bad, bad
