"""What every artefact's saver and loader share: atomic writes, file hashes, versioned JSON
manifests and validated .npz arrays; and the check every command runs on its outputs
before it starts working (`prepare_output_dir`, `check_output_file`).

Each typed artefact (distilled dataset, export bundle, AD histories, compress stamps) is a
JSON manifest that names its format and version and records the SHA-256 of its data files,
so a truncated, edited or foreign file is refused with one line instead of a traceback.

Standard library and NumPy only: the on-device retraining path reads datasets through it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in blocks (checkpoints and ONNX files can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` then rename over `path`: a crash leaves the old file or the new, never half.

    `tmp` is `path` with ".tmp" appended; a `write` that raises leaves the old file and
    removes `tmp`. An OSError that names no file, or only `tmp`, is given `path`: a full
    disk fails a `write()` call, which knows no name, and its one-line report must say
    which output could not be written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):
            exc.filename = str(path)
        raise
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Atomically write `text`."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    """Atomically write `arrays` as an .npz file."""
    save = np.savez_compressed if compressed else np.savez

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # given a name, NumPy would append ".npz" to the temporary one
            save(f, **arrays)

    atomic_write(path, write)


def artefact_files(path: Path, stem: str, what: str, hint: str = "") -> tuple[Path, Path]:
    """`stem.npz` and its manifest `stem.json`, given their folder or either file.

    Any other path is refused, naming the path given and what was expected (with `hint`
    appended): a mistyped name must not fall back to the artefact in its parent folder."""
    path = Path(path)
    if path.is_dir():
        directory = path
    elif path.name in (f"{stem}.npz", f"{stem}.json"):
        directory = path.parent
    else:
        problem = "is a file of another name" if path.exists() else "does not exist"
        raise UserError(f"{what} {path} {problem}; expected a folder holding {stem}.npz and {stem}.json, "
                        f"or one of those files{hint}")
    npz, manifest = directory / f"{stem}.npz", directory / f"{stem}.json"
    for required in (npz, manifest):
        if not required.is_file():
            raise UserError(f"{what} file {required} does not exist{hint}")
    return npz, manifest


def _file_in_the_way(path: Path) -> Path | None:
    """The first of `path` and its parents that exists and is not a folder."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def prepare_output_dir(path: Path, what: str = "output folder") -> Path:
    """Create the folder `path` (and its parents) and check that a file can be written in it.

    A command calls this before its long work, so a file in the way or a read-only place is
    refused with one line at once rather than as a traceback at its first write."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot create {what} {path}: {_file_in_the_way(path)} is a file, not a folder") from None
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    try:
        # Permission bits do not tell (root, read-only mounts, ACLs): only a write does.
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tinypolicy-", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write into {what} {path}: {exc.strerror or exc}") from None
    return path


def check_output_file(path: Path, what: str, inputs: tuple[Path | None, ...] = ()) -> Path:
    """Refuse an output file that is a folder or one of the command's `inputs` (compared as
    resolved paths; None entries are skipped), and prepare its folder (`prepare_output_dir`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if path.resolve() in {Path(p).resolve() for p in inputs if p is not None}:
        raise UserError(f"{what} {path} is also an input of this command and would be overwritten; "
                        "give another name")
    prepare_output_dir(path.parent, f"the folder of {what}")
    return path


def read_manifest(path: Path, fmt: str, version: int, what: str) -> dict[str, Any]:
    """The JSON manifest at `path`, refused unless it is a `fmt` manifest of `version`.

    `what` names the artefact in the error messages ("dataset description", ...)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise UserError(f"{path} is not a tinypolicy {what}")
    if manifest.get("version") != version:
        raise UserError(f"{path} has {what} version {manifest.get('version')}, expected {version}")
    return manifest


def check_hash(path: Path, expected: str | None, manifest_name: str) -> str:
    """The file's SHA-256, refused unless it equals the one its manifest recorded."""
    digest = sha256_file(path)
    if digest != expected:
        raise UserError(f"{path} does not match the hash in {manifest_name}: truncated or modified")
    return digest


def load_arrays(npz: Path, names: tuple[str, ...] | list[str], what: str) -> dict[str, np.ndarray]:
    """The named arrays of an .npz file (`allow_pickle=False`), refused if any is missing."""
    try:
        with np.load(npz, allow_pickle=False) as data:
            missing = [name for name in names if name not in data.files]
            if missing:
                raise UserError(f"{npz} is missing {', '.join(missing)}")
            return {name: np.asarray(data[name]) for name in names}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read {what} {npz}: {type(exc).__name__}: {exc}") from None
