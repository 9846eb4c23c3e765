"""The run store's format number and the one place that reads older stores.

`<root>/store.json` holds {"format": FORMAT}. A store without it was written by medscale before the number
existed (format 1). Opening a store (RunStore) upgrades it in place, once, with atomic renames and writes,
so the rest of medscale reads only the current format:

    format 1 -> 2   runs/<hash>/            -> runs/<objective>-<hash>/   (the kind prefix of run ids)
                    datasets/<hash>/        -> datasets/<kind>-<hash>/     (simulator or meds)
                    <step>/status.json      -> <step>/status.jsonl         (the state history; runs, datasets,
                                                                            downstream evaluations)
                    downstream/eval-*/rows.json, subgroups.json: each row gains `labels` from identity.json

A run whose lease is live is left alone (its holder is an older medscale still running; the next opening
upgrades it). Run configs of any format are read by `upgrade_run_config`, which fills what older configs lack.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

import yaml

from medscale.atomic import CorruptFile, read_json, write_json
from medscale.scaling.sweep.step_dir import HASH_LENGTH, StepDir

FORMAT = 2
FORMAT_FILE = "store.json"
_BARE_HASH = re.compile(rf"^[0-9a-f]{{{HASH_LENGTH}}}$")
LIVE_LEASE_S = 60.0
RUN_STATES = ("pending", "running", "done", "failed", "diverged", "preempted", "stale")  # a superset of every step's


def store_format(root: Path) -> int:
    try:
        body = read_json(root / FORMAT_FILE)
    except CorruptFile:
        return 1
    return int(body.get("format", 1)) if isinstance(body, dict) else 1


def upgrade_store(root: Path | str, say: Callable[[str], None] | None = None) -> int:
    """Bring the store at `root` to FORMAT (nothing when it is there, or when there is no store). Returns the
    number of folders changed."""
    root = Path(root)
    if (root / FORMAT_FILE).exists() and store_format(root) >= FORMAT:
        return 0
    if not ((root / "runs").is_dir() or (root / "datasets").is_dir() or (root / "downstream").is_dir()):
        mark_current(root)  # a new store
        return 0
    changed = _runs_prefixed(root) + _datasets_prefixed(root) + _histories(root) + _downstream_labels(root)
    if changed and say:
        say(f"{root}: upgraded {changed} folder(s) written by an older medscale to store format {FORMAT}")
    if not _live_legacy_folders(root):
        write_json(root / FORMAT_FILE, {"format": FORMAT})
    return changed


def mark_current(root: Path | str) -> None:
    """A new store is written in the current format."""
    root = Path(root)
    if root.is_dir() and not (root / FORMAT_FILE).exists():
        write_json(root / FORMAT_FILE, {"format": FORMAT})


def upgrade_run_config(body: dict) -> dict:
    """A run config of any format in the current one (medscale.scaling.run.run_config.RunConfig's dict form)."""
    body = dict(body)
    if body.get("checkpoint") is None:
        body.pop("checkpoint", None)  # format 1 configs may carry `checkpoint: null`
    for key in ("options", "mesh"):
        if key in body and body[key] is None:
            body.pop(key)
    return body


def format1_history(folder: Path, states: tuple[str, ...]) -> list[dict]:
    """The state history of a step folder not yet upgraded: format 1 kept one `status.json`."""
    try:
        body = read_json(folder / "status.json")
    except (CorruptFile, IsADirectoryError):
        return []
    return [body] if isinstance(body, dict) and body.get("state") in states else []


def rows_with_labels(folder: Path, name: str) -> list[dict]:
    """A finished downstream evaluation's rows (rows.json, subgroups.json), each with its label source
    (`labels`): rows of format 1 take it from identity.json."""
    source = (read_json(folder / "identity.json") or {}).get("labels") or ""
    return [{**r, "labels": r.get("labels", source) or ""} for r in (read_json(folder / name) or [])]


def _folders(parent: Path):
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []


def _live(folder: Path) -> bool:
    return StepDir(folder).lease_is_live(LIVE_LEASE_S)


def _runs_prefixed(root: Path) -> int:
    n = 0
    for folder in _folders(root / "runs"):
        if not _BARE_HASH.match(folder.name) or _live(folder):
            continue
        try:
            objective = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("objective", "run")
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # unreadable: the sweep that owns it rewrites its config, then a later opening renames it
        target = folder.with_name(f"{objective}-{folder.name}")
        if not target.exists():
            os.rename(folder, target)
            n += 1
    return n


def _live_legacy_folders(root: Path) -> bool:
    """Run or dataset folders left in format 1 (an older medscale holds their lease): upgrade again next time."""
    return any(_BARE_HASH.match(f.name) for f in _folders(root / "runs") + _folders(root / "datasets"))


def _datasets_prefixed(root: Path) -> int:
    n = 0
    for folder in _folders(root / "datasets"):
        if not _BARE_HASH.match(folder.name) or _live(folder):
            continue
        kind = "simulator" if (folder / "meds").is_dir() else "meds"  # only the simulator writes meds/ here
        target = folder.with_name(f"{kind}-{folder.name}")
        if not target.exists():
            os.rename(folder, target)
            n += 1
    return n


def _step_folders(root: Path):
    yield from _folders(root / "runs")
    yield from _folders(root / "datasets")
    yield from (f for f in _folders(root / "downstream") if f.name.startswith("eval-"))


def _histories(root: Path) -> int:
    """status.json (one state) -> status.jsonl (the history), as one line with the same fields."""
    n = 0
    for folder in _step_folders(root):
        old, new = folder / "status.json", StepDir(folder).history_path
        if not old.is_file() or new.exists():
            continue
        for body in format1_history(folder, RUN_STATES):
            tmp = new.with_name(new.name + ".upgrade")
            tmp.write_text(json.dumps(body, sort_keys=True, default=str) + "\n")
            os.replace(tmp, new)
        os.replace(old, folder / "status.json.format1")
        n += 1
    return n


def _downstream_labels(root: Path) -> int:
    """Rows of finished evaluations written before the `labels` column take it from identity.json."""
    n = 0
    for folder in _folders(root / "downstream"):
        if not folder.name.startswith("eval-"):
            continue
        try:
            source = (read_json(folder / "identity.json") or {}).get("labels") or ""
        except CorruptFile:
            continue
        for name in ("rows.json", "subgroups.json"):
            try:
                rows = read_json(folder / name)
            except CorruptFile:
                continue
            if isinstance(rows, list) and any(isinstance(r, dict) and "labels" not in r for r in rows):
                write_json(folder / name, [{**r, "labels": r.get("labels", source) or ""} for r in rows])
                n += 1
    return n
