"""Zero-shot risk from a decoder: roll out K futures per prediction time, count those with the outcome.

For each history, K continuations of at most T tokens are sampled at temperature 1 (models/rollout.py).
Elapsed time is tracked from the time-gap tokens: a `TIME//lo-hi` token advances the clock by the middle
of its bin, the open last bin `TIME//lo+` by lo (tokens without a gap token are simultaneous events). A
trajectory stops at EOS (the record ends). The label window of the task (data/tasks.LabelRule) is read
off the trajectory:

- temporal window (t, t + H]: the outcome happened if a label code appears while the clock is <= H;
- event-bound window (t, first end event]: the outcome happened if a label code appears at or before the
  first end-event code (in-hospital death: death before discharge).

The probability is the fraction of the K trajectories with the outcome (1 minus it for negated tasks).
Rollouts run until the window closes: T is a per-task budget from the data's event rate in the train split:
the 90th percentile of the events the task's window holds after the fit samples' prediction times (up to
H later, or to the first end event), times the tokens per event, times a margin (`window_factor`), capped
by the spec's `max_new_tokens` (reported, with whether the cap bit). Generation goes in chunks and stops as soon as every trajectory of
the batch has closed its window (or ended its record), and slides its context when the model's max_len is
reached (models/rollout.sample_until). A trajectory still open at T is censored and counted as "no
outcome"; the censored fraction is reported. The K sweep reads the same samples: the probability from the
first 1, 4, ... of the K trajectories.
Regression tasks (a sum of values) have no zero-shot estimate here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medscale.data.tasks import LabelRule
from medscale.data.tokenizer import BOS, EOS, MASK, PAD, Tokenizer


def gap_seconds(tokenizer: Tokenizer) -> np.ndarray:
    """Seconds each token advances the clock: the middle of a TIME bin, 0 for every other token."""
    out = np.zeros(tokenizer.vocab_size)
    edges_s = tokenizer.time_edges_us / 1e6
    for i in range(len(tokenizer.time_tokens)):
        lo = edges_s[i]
        out[tokenizer.time_base + i] = (lo + edges_s[i + 1]) / 2 if i + 1 < len(edges_s) else lo
    return out


def read_windows(trajectories_BxKxT: np.ndarray, rule: LabelRule, tokenizer: Tokenizer
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(hit [B, K]: the outcome happened inside the window, closed [B, K]: the window has closed or the
    record ended) for each sampled trajectory."""
    if rule.value_sum:
        raise ValueError("zero-shot estimates binary outcomes only (this task's label is a sum of values)")
    vocab = tokenizer.vocab
    is_label = np.zeros(len(vocab), bool)
    is_label[rule.label.ids(vocab)] = True
    is_end = np.zeros(len(vocab), bool)
    if rule.end is not None:
        is_end[rule.end.ids(vocab)] = True
    traj = np.asarray(trajectories_BxKxT)
    alive = np.cumsum(traj == EOS, axis=-1) == 0                      # before the first EOS
    clock = np.cumsum(gap_seconds(tokenizer)[traj], axis=-1)
    if rule.horizon_s is not None:
        in_window = clock <= rule.horizon_s
        closed = (~in_window).any(axis=-1) | (~alive).any(axis=-1)
    else:
        end_seen = np.cumsum(is_end[traj], axis=-1)
        before_end = end_seen - is_end[traj] == 0                      # up to and including the first end
        in_window = before_end if rule.end_inclusive else (end_seen == 0)
        closed = (end_seen[..., -1] > 0) | (~alive).any(axis=-1)
    hit = (is_label[traj] & in_window & alive).any(axis=-1)
    return hit, closed


def outcome_probabilities(trajectories_BxKxT: np.ndarray, rule: LabelRule, tokenizer: Tokenizer
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(probability per prompt [B], censored fraction per prompt [B]) from sampled token ids."""
    hit, closed = read_windows(trajectories_BxKxT, rule, tokenizer)
    p = hit.mean(axis=-1)
    censored = (~closed & ~hit).mean(axis=-1)
    return (1.0 - p if rule.negate else p), censored


def tokens_per_event(token_dir, tokenizer: Tokenizer) -> float:
    """The train split's tokens per event (each event is a code token, with its value and time-gap tokens)."""
    from pathlib import Path

    tokens = np.load(Path(token_dir) / "train" / "tokens.npy", mmap_mode="r")
    step = max(1, tokens.size // 2_000_000)   # a strided sample is plenty for a ratio
    sample = np.asarray(tokens[::step])
    n_codes = int(np.sum(sample >= tokenizer.code_base))
    return float(sample.size / n_codes) if n_codes else 1.0


def window_events(events, samples, rule: LabelRule, quantile: float = 0.9) -> float:
    """The `quantile` of the number of events inside the label window after each sample's prediction time,
    in the data (`events`: polars subject_id, time, code; `samples`: subject_id, prediction_time): for
    (t, t + H], or up to and including the first end event (the record's end when there is none)."""
    import polars as pl

    s = pl.DataFrame({"_sample": np.arange(len(samples)),
                      "subject_id": samples["subject_id"].to_numpy(dtype=np.int64),
                      "t": samples["prediction_time"].to_numpy().astype("datetime64[us]")})
    after = (s.join(events.select("subject_id", "time", "code").filter(pl.col("time").is_not_null()),
                    on="subject_id", how="inner").filter(pl.col("time") > pl.col("t")))
    if rule.horizon_s is not None:
        inside = after.filter(pl.col("time") <= pl.col("t") + pl.duration(seconds=int(rule.horizon_s)))
    else:
        codes = after["code"].unique().to_list()
        end_codes = [c for c in codes if rule.end(c)]
        ends = (after.filter(pl.col("code").is_in(end_codes)).group_by("_sample")
                .agg(pl.col("time").min().alias("end")))
        inside = (after.join(ends, on="_sample", how="left")
                  .filter(pl.col("end").is_null() | (pl.col("time") <= pl.col("end"))))
    counts = np.zeros(len(samples))
    per = inside.group_by("_sample").len()
    counts[per["_sample"].to_numpy()] = per["len"].to_numpy()
    return float(np.quantile(counts, quantile)) if counts.size else 0.0


@dataclass(frozen=True)
class RolloutBudget:
    tokens: int          # tokens rolled out per trajectory at most
    wanted: int          # what the window holds (quantile of the train split) x the margin
    cap: int             # the hard cap (spec max_new_tokens)
    capped: bool         # the window needs more than the cap allows


def rollout_budget(window_tokens: float, *, cap: int, factor: float = 1.5, minimum: int = 16) -> RolloutBudget:
    """Tokens per trajectory for a task: `factor` x the tokens its window holds (window_events x
    tokens_per_event), at least `minimum`, at most the hard cap."""
    wanted = max(minimum, int(np.ceil(factor * window_tokens)))
    return RolloutBudget(min(cap, wanted), wanted, cap, wanted > cap)


def zero_shot_scores(model, tokens_NxL: np.ndarray, lengths_N: np.ndarray, rule: LabelRule, tokenizer: Tokenizer,
                     *, k: int, max_new: int, seed: int, batch_prompts: int = 16, temperature: float = 1.0,
                     ks: tuple = (), chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N] and censored fractions [N] for the histories, K rollouts each, each rolled out until
    every window of its batch has closed or `max_new` tokens. With `ks`, also {k': probabilities from the
    first k' trajectories} (the K sweep: same samples, fewer of them) as a third value."""
    import jax

    from medscale.models.rollout import sample_until

    if not model.cfg.causal:
        raise ValueError("zero-shot rollouts need a decoder (causal) model")
    chunk = max(1, min(chunk, max_new, model.cfg.max_len // 4))
    probs, cens, by_k = [], [], {kk: [] for kk in ks if kk <= k}
    key = jax.random.key(seed)
    banned = (PAD, BOS, MASK)
    recontext = lambda t, ln, keep: _shorten(t, ln, keep, tokenizer)  # noqa: E731

    def finished(traj):
        hit, closed = read_windows(traj, rule, tokenizer)
        return bool(np.all(hit | closed))

    for i in range(0, len(lengths_N), batch_prompts):
        tok = tokens_NxL[i:i + batch_prompts]
        ln = lengths_N[i:i + batch_prompts]
        n = len(ln)
        if n < batch_prompts:  # a fixed batch shape: one compilation
            tok = np.concatenate([tok, np.repeat(tok[:1], batch_prompts - n, axis=0)])
            ln = np.concatenate([ln, np.repeat(ln[:1], batch_prompts - n)])
        key, sub = jax.random.split(key)
        traj = sample_until(model.graphdef, model.params, tok, ln, k=k, max_new=max_new, key=sub, banned=banned,
                            temperature=temperature, chunk=chunk, finished=finished, max_len=model.cfg.max_len,
                            recontext=recontext)
        p, c = outcome_probabilities(traj[:n], rule, tokenizer)
        probs.append(p)
        cens.append(c)
        for kk in by_k:
            by_k[kk].append(outcome_probabilities(traj[:n, :kk], rule, tokenizer)[0])
    p, c = np.concatenate(probs), np.concatenate(cens)
    if ks:
        return p, c, {kk: np.concatenate(v) for kk, v in by_k.items()}
    return p, c


def _shorten(tokens_NxL, lengths_N, keep: int, tokenizer: Tokenizer):
    """Histories cut to `keep` tokens: the 3-token prefix and the most recent keep-3 tokens."""
    out = np.zeros((len(lengths_N), keep), np.int32)
    out_len = np.minimum(lengths_N, keep)
    for i, ln in enumerate(lengths_N):
        seq = tokens_NxL[i, :ln]
        if ln > keep:
            tail = seq[ln - (keep - 3):]
            lead = int(np.argmax((tail < tokenizer.value_base) | (tail >= tokenizer.code_base)))
            seq = np.concatenate([seq[:3], tail[lead:]])
        out[i, :seq.size] = seq
        out_len[i] = seq.size
    return out, out_len

