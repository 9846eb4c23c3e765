"""Atomic file writes, the one place they are done: write a temporary file in the same folder,
fsync it, rename it over the target, fsync the folder.

A reader sees either the old file or the new one, never a torn one, even if the writer is killed.
Files get the permissions the user's umask gives any new file (collaborators on shared storage can
read them), not the 0600 of a private temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path | str, path: Path | str) -> Path:
    """fsync `tmp` (already written and closed) and rename it onto `path`."""
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def temporary_path(path: Path | str) -> Path:
    """A fresh hidden temporary file beside `path`, with the user's umask permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def naming(path: Path | str):
    """An OSError raised without a file name (a write or fsync on a full disk) gets `path` as its name,
    so the message can say where."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise


def write_with(path: Path | str, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_path)`, then atomically move tmp_path onto `path`."""
    path = Path(path)
    with naming(path):
        tmp = temporary_path(path)
        try:
            writer(tmp)
            return commit(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_text(path: Path | str, text: str) -> Path:
    return write_with(path, lambda p: p.write_text(text))


def write_json(path: Path | str, obj: Any) -> Path:
    """Deterministic JSON (sorted keys): the same object gives the same bytes."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_yaml(path: Path | str, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_json(path: Path | str, default: Any = None) -> Any:
    """The parsed file, or `default` when it does not exist. A torn or corrupt file raises CorruptFile."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return default
    except UnicodeDecodeError:
        raise CorruptFile(path, "not valid JSON (not UTF-8 text)") from None
    except IsADirectoryError:
        raise CorruptFile(path, "a folder where a JSON file belongs") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptFile(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None


class CorruptFile(ValueError):
    """A file that exists but cannot be parsed: written by something else, or damaged."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# Output folders: medscale writes only into folders it made (a marker file says so), never over a
# user's files and never inside its input.
# ---------------------------------------------------------------------------------------------

MARKER = ".medscale-store.json"
KINDS = ("tokens", "store", "cohort", "export")


class OutDirError(ValueError):
    """An output folder medscale must not write into; the message names it and what to do."""


def marker(path: Path | str) -> dict | None:
    """The marker of a medscale folder, or None when there is none (or it is unreadable)."""
    try:
        body = read_json(Path(path) / MARKER)
    except (CorruptFile, OSError):
        return None
    return body if isinstance(body, dict) else None


def write_marker(path: Path | str, kind: str, **fields: Any) -> None:
    write_json(Path(path) / MARKER, {"kind": kind, "format": 1, **fields})


def claim_dir(path: Path | str, kind: str, *, adopt: Callable[[Path], bool] = lambda p: False,
              inputs: tuple[Path | str, ...] = (), option: str = "--out") -> Path:
    """Make `path` a medscale folder of `kind`, or raise OutDirError. Allowed: a folder that is absent,
    empty, or already a medscale folder of the same kind (or one `adopt` recognises as ours, written
    before the marker existed). Refused: a file, a folder holding anything else, a folder inside one
    of `inputs` (the data being read)."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    path = Path(path)
    what = {"tokens": "token", "store": "run", "cohort": "cohort", "export": "model export"}[kind]
    for source in inputs:
        src = Path(source).resolve()
        target = path.resolve()
        if target == src or src in target.parents:
            raise OutDirError(f"{option} {path} is inside the input dataset {source}: medscale never writes into "
                              "its input. Choose a folder outside it.")
    if path.exists() and not path.is_dir():
        raise OutDirError(f"{option} {path} is a file, not a folder: give a new or empty folder for the {what} store.")
    body = marker(path) if path.is_dir() else None
    if body is not None:
        if body.get("kind") != kind:
            raise OutDirError(f"{option} {path} is a medscale {body.get('kind')} folder, not a {what} store: "
                              "choose another folder.")
        return path
    if path.is_dir() and any(path.iterdir()) and not adopt(path):
        shown = ", ".join(sorted(p.name for p in path.iterdir())[:5])
        raise OutDirError(f"{option} {path} is not empty ({shown}, ...) and is not a medscale {what} store, so "
                          "medscale will not write into it (it could overwrite your files). Choose a new or empty "
                          "folder.")
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, kind)
    return path


def remove_stale_temporaries(folder: Path | str) -> int:
    """Delete the hidden `.<name>.*.tmp` files a killed writer left in `folder` and below; returns how many.
    Only for folders one writer owns at a time (a token store being rewritten, a cohort being made)."""
    n = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            n += 1
    return n
