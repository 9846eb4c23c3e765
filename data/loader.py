"""Step-indexed grain pipelines of training and evaluation batches.

`train_batches(...)[step]` depends only on (seed, step): windows are shuffled by `seed` (reshuffled
every epoch by grain's per-epoch seeds), the dataset repeats forever, and the masking of the
masked-event objective draws from a generator seeded by (seed, step). Resuming at step k is
`ds[k]`, `ds[k+1]`, ... with no state to restore.

In a run of several processes each loads only its share of the global batch: `rows` names the
global batch rows this process feeds (those its devices hold). Its batch for step s is exactly
those rows of the global batch for step s, masking draws included, so the split never changes
what is trained on.

A batch: inputs int32[B,L], targets int32[B,L], weights float32[B,L], segment_ids int32[B,L].
- next_event: inputs = window[:-1], targets = window[1:], weights = (target != PAD).
- masked_event (BERT): of the non-special positions of window[:-1], each is chosen with
  probability mask_prob; a chosen one becomes MASK (80%), a random non-special token (10%) or stays
  (10%); targets = original tokens, weights = 1 on chosen positions only.
"""
from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np

from medscale.data.meds import MedsError
from medscale.data.token_store import TokenWindows
from medscale.data.tokenizer import MASK, N_SPECIAL, PAD

OBJECTIVES = ("next_event", "masked_event")
_MASK_STREAM = 0x6D61736B  # separates the masking generator from any other use of (seed, step)


def _vocab_size(token_dir) -> int:
    manifest = Path(token_dir) / "manifest.json"
    if not manifest.is_file():
        raise MedsError(f"{token_dir} has no manifest.json: it is not a finished token folder. Run tokenize_dataset "
                        "(medscale tokenize) first.")
    return int(json.loads(manifest.read_text())["vocab_size"])


def _stack(windows: list[dict]) -> dict[str, np.ndarray]:
    return {"tokens": np.stack([w["tokens"] for w in windows]),
            "segment_ids": np.stack([w["segment_ids"] for w in windows])}


def next_event_batch(tokens_BxL1: np.ndarray, segments_BxL1: np.ndarray) -> dict[str, np.ndarray]:
    targets = tokens_BxL1[:, 1:]
    return {"inputs": tokens_BxL1[:, :-1].astype(np.int32), "targets": targets.astype(np.int32),
            "weights": (targets != PAD).astype(np.float32), "segment_ids": segments_BxL1[:, :-1].astype(np.int32)}


def masked_event_batch(tokens_BxL1: np.ndarray, segments_BxL1: np.ndarray, rng: np.random.Generator,
                       mask_prob: float, vocab_size: int, rows: np.ndarray | None = None,
                       global_rows: int | None = None) -> dict[str, np.ndarray]:
    """`rows`/`global_rows`: the tokens are these rows of a batch of `global_rows`; the random draws are
    made for the whole batch and the same rows taken, so a share masks exactly as the whole would."""
    original_BxL = tokens_BxL1[:, :-1].astype(np.int32)
    maskable = original_BxL >= N_SPECIAL
    shape = original_BxL.shape if rows is None else (global_rows, original_BxL.shape[1])
    take = (lambda a: a) if rows is None else (lambda a: a[rows])  # noqa: E731
    chosen = maskable & (take(rng.random(shape)) < mask_prob)
    action = take(rng.random(shape))
    random_tokens = take(rng.integers(N_SPECIAL, vocab_size, shape, dtype=np.int32))
    inputs = np.where(chosen & (action < 0.8), MASK, original_BxL)
    inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
    return {"inputs": inputs.astype(np.int32), "targets": original_BxL, "weights": chosen.astype(np.float32),
            "segment_ids": segments_BxL1[:, :-1].astype(np.int32)}


class _MakeBatch:
    """Picklable step -> batch transform (grain may send it to worker processes)."""

    def __init__(self, objective: str, seed: int, mask_prob: float, vocab_size: int,
                 rows: np.ndarray | None = None, global_rows: int | None = None) -> None:
        self.objective, self.seed, self.mask_prob, self.vocab_size = objective, seed, mask_prob, vocab_size
        self.rows, self.global_rows = rows, global_rows

    def __call__(self, step: int, windows) -> dict[str, np.ndarray]:
        batch = windows if isinstance(windows, dict) else _stack(windows)
        if self.objective == "next_event":
            return next_event_batch(batch["tokens"], batch["segment_ids"])
        rng = np.random.default_rng([self.seed, int(step), _MASK_STREAM])
        return masked_event_batch(batch["tokens"], batch["segment_ids"], rng, self.mask_prob, self.vocab_size,
                                  self.rows, self.global_rows)


class _StepRows:
    """Picklable step -> the chosen rows of that step's global batch: row r of step s is element
    s * batch_size + r of the shuffled, repeated windows (what `.batch(batch_size)` would group)."""

    def __init__(self, windows: grain.MapDataset, batch_size: int, rows: np.ndarray) -> None:
        self.windows, self.batch_size, self.rows = windows, batch_size, rows

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        start = int(step) * self.batch_size
        return _stack([self.windows[start + int(r)] for r in self.rows])


def _check(objective: str, seq_len: int, batch_size: int, seed: int, mask_prob: float) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")


def _windows(token_dir, split: str, seq_len: int) -> TokenWindows:
    windows = TokenWindows(token_dir, split, seq_len)
    if len(windows) == 0:
        raise MedsError(f"{token_dir}/{split}: {windows.tokens.shape[0]:,} tokens are fewer than one window of "
                        f"seq_len + 1 = {seq_len + 1}. Use a shorter seq_len or more subjects.")
    return windows


_SUBSET_STREAM = 0x73756273  # the fixed seed of the subject ranks behind train_fraction


class WindowSubset:
    """The windows of a TokenWindows whose first token belongs to a chosen subject (picklable)."""

    def __init__(self, windows: TokenWindows, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
        self.windows, self.fraction = windows, float(fraction)
        n_subjects = windows.offsets.size
        # Each subject gets a fixed random rank, so the subjects of fraction 0.1 are among those of 0.3.
        rank = np.random.default_rng(_SUBSET_STREAM).permutation(n_subjects)
        chosen = rank < max(1, round(fraction * n_subjects))
        first_subject = np.searchsorted(windows.offsets, np.arange(len(windows)) * windows.seq_len, side="right") - 1
        self.index = np.flatnonzero(chosen[first_subject])

    def __len__(self) -> int:
        return int(self.index.size)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.windows[int(self.index[i])]


def train_windows(token_dir, split: str, seq_len: int, train_fraction: float = 1.0):
    """The windows a run trains on: all of the split, or those of a fixed random `train_fraction` of its subjects."""
    windows = _windows(token_dir, split, seq_len)
    if train_fraction >= 1.0:
        return windows
    subset = WindowSubset(windows, train_fraction)
    if len(subset) == 0:
        raise MedsError(f"{token_dir}/{split}: train_fraction {train_fraction} keeps no window; use a larger fraction")
    return subset


def unique_train_tokens(token_dir, split: str, seq_len: int, train_fraction: float = 1.0) -> int:
    """Distinct target tokens a run can see (windows x seq_len): past these, training repeats data."""
    return len(train_windows(token_dir, split, seq_len, train_fraction)) * int(seq_len)


def _check_rows(rows, batch_size: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= batch_size \
            or len(np.unique(rows)) != len(rows):
        raise ValueError(f"rows must be distinct row numbers in [0, {batch_size}), got {rows.tolist()}")
    return rows


def train_batches(token_dir, split: str = "train", *, seq_len: int, batch_size: int, objective: str, seed: int,
                  mask_prob: float = 0.15, train_fraction: float = 1.0, rows=None) -> grain.MapDataset:
    """Infinite grain.MapDataset; `ds[step]` is the batch for that step (of `batch_size` rows), or with
    `rows` only those rows of it, in the order given (this process's share of a multi-process run).
    `train_fraction` < 1 trains on the windows of a fixed random subset of the split's subjects (the same
    subset for every seed and run)."""
    _check(objective, seq_len, batch_size, seed, mask_prob)
    vocab_size = _vocab_size(token_dir)
    windows = train_windows(token_dir, split, seq_len, train_fraction)
    ds = grain.MapDataset.source(windows).shuffle(seed=seed).repeat()
    if rows is None:
        ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_stack)
        return ds.map_with_index(_MakeBatch(objective, seed, mask_prob, vocab_size))
    rows = _check_rows(rows, batch_size)
    steps = grain.MapDataset.range(len(ds) // batch_size).map(_StepRows(ds, batch_size, rows))
    return steps.map_with_index(_MakeBatch(objective, seed, mask_prob, vocab_size, rows, batch_size))


def eval_batches(token_dir, split: str, *, seq_len: int, batch_size: int, objective: str, n_batches: int,
                 seed: int = 0, mask_prob: float = 0.15, rows=None) -> list[dict[str, np.ndarray]]:
    """A fixed list of `n_batches` batches (the same for the same arguments) for held-out loss.

    Windows are drawn without repetition while the split has enough of them; a small split cycles.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    ds = train_batches(token_dir, split, seq_len=seq_len, batch_size=batch_size, objective=objective, seed=seed,
                       mask_prob=mask_prob, rows=rows)
    return [ds[i] for i in range(n_batches)]
