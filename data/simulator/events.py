"""Collects the simulator's events and ground-truth rows as column chunks, then finalizes a shard.

Times are integer minutes since 1970-01-01 held in float64 while simulating. Each event has a `kind`
that says what happens to it around death and hospital stays:

- NORMAL: dropped if after the patient's death.
- KEEP: a committed draw (a diagnosis whose onset was drawn, a medication start, a claim): if it
  would fall after death it is recorded at the death time instead, so the drawn outcome always shows.
- AMBULATORY: an outpatient/ED/check-up event: dropped after death and dropped inside a hospital stay.
"""
from __future__ import annotations

import numpy as np

NORMAL, KEEP, AMBULATORY = 0, 1, 2
MINUTE_OFFSET = 60 * 525_960  # shifts minutes since 1970 to positive back to 1910 (births start ~1925)


def _column(x, n: int, dtype) -> np.ndarray:
    if np.ndim(x) == 0:
        return np.full(n, x, dtype=dtype)
    return np.asarray(x, dtype=dtype)


class EventBuffer:
    def __init__(self) -> None:
        self._cols: dict[str, list[np.ndarray]] = {k: [] for k in ("row", "time", "code", "value", "kind", "prio")}

    def add(self, rows, time, code, value=None, kind: int = NORMAL, prio: int = 1) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        n = rows.size
        if n == 0:
            return
        self._cols["row"].append(rows)
        self._cols["time"].append(_column(time, n, np.float64))
        self._cols["code"].append(_column(code, n, np.int32))
        self._cols["value"].append(_column(np.nan if value is None else value, n, np.float32))
        self._cols["kind"].append(np.full(n, kind, dtype=np.int8))
        self._cols["prio"].append(np.full(n, prio, dtype=np.int8))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(v) if v else np.empty(0)) for k, v in self._cols.items()}


class GroundTruthBuffer:
    def __init__(self) -> None:
        self._cols: dict[str, list[np.ndarray]] = {k: [] for k in ("row", "time", "outcome", "value", "target", "ambulatory")}

    def add(self, rows, time, outcome: int, value, target=-1, ambulatory: bool = False) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        n = rows.size
        if n == 0:
            return
        self._cols["row"].append(rows)
        self._cols["time"].append(np.broadcast_to(np.asarray(time, dtype=np.float64), (n,)))
        self._cols["outcome"].append(np.full(n, outcome, dtype=np.int8))
        self._cols["value"].append(np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)))
        self._cols["target"].append(np.broadcast_to(np.asarray(target, dtype=np.int32), (n,)))
        self._cols["ambulatory"].append(np.full(n, ambulatory, dtype=bool))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(v) if v else np.empty(0)) for k, v in self._cols.items()}


def inside_stays(rows: np.ndarray, minutes: np.ndarray, stays: dict[str, np.ndarray]) -> np.ndarray:
    """True where (row, minute) falls inside [admission, end] of one of that row's hospital stays.

    Stays of one patient never overlap, so the only candidate is the last stay starting at or before
    the minute: found with one searchsorted over (row, start) keys.
    """
    if stays["row"].size == 0 or rows.size == 0:
        return np.zeros(rows.size, dtype=bool)
    offset = 2**33  # minutes since 1970 shifted positive; births go back to ~1925
    key = lambda r, m: (r.astype(np.int64) << 36) + (m.astype(np.int64) + offset)  # noqa: E731
    order = np.argsort(key(stays["row"], stays["start"]), kind="stable")
    s_row, s_start, s_end = stays["row"][order], stays["start"][order], stays["end"][order]
    pos = np.searchsorted(key(s_row, s_start), key(rows, minutes), side="right") - 1
    valid = pos >= 0
    pos = np.maximum(pos, 0)
    return valid & (s_row[pos] == rows) & (minutes <= s_end[pos]) & (minutes >= s_start[pos])


def finalize(events: dict[str, np.ndarray], truth: dict[str, np.ndarray], stays: dict[str, np.ndarray],
             death: np.ndarray, followup_end: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Apply death, stays and end of follow-up; sort events by (row, time, priority, emission order)."""
    row, t = events["row"], np.round(events["time"])
    kind = events["kind"]
    static = np.isnan(t)
    d = death[row]
    t = np.where((kind == KEEP) & (t > d), d, t)
    keep = static | ((t <= d) & (t < followup_end[row]))
    amb = (kind == AMBULATORY) & keep
    keep[amb] &= ~inside_stays(row[amb], t[amb], stays)
    row, t, prio = row[keep], t[keep], events["prio"][keep]
    # one int64 key (row, minute, priority); a stable sort keeps emission order among equal keys
    minute = np.where(np.isnan(t), 0, t + MINUTE_OFFSET).astype(np.int64)
    order = np.argsort((row << 32) | (minute << 4) | prio.astype(np.int64), kind="stable")
    out = {"row": row[order], "time": t[order], "code": events["code"][keep][order],
           "value": events["value"][keep][order]}

    trow, tt = truth["row"], np.round(truth["time"])
    tkeep = tt < death[trow]
    amb = truth["ambulatory"] & tkeep
    tkeep[amb] &= ~inside_stays(trow[amb], tt[amb], stays)
    torder = np.lexsort((truth["outcome"][tkeep], tt[tkeep], trow[tkeep]))
    gt = {k: truth[k][tkeep][torder] for k in ("row", "outcome", "value", "target")}
    gt["time"] = tt[tkeep][torder]
    return out, gt
