"""The KV-cached decoder computes the full forward's logits; zero-shot reads label windows correctly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medscale.data.tasks import CodeMatcher, LabelRule
from medscale.models.config import ModelConfig
from medscale.models.rollout import cached_logits_jit, pooled_jit, sample_continuations
from medscale.models.transformer import Transformer


def _model(causal=True):
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=32, causal=causal)
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    return cfg, graphdef, nnx.to_pure_dict(state)


def test_cached_decoding_equals_the_full_forward_for_prompts_of_different_lengths():
    cfg, graphdef, params = _model()
    rng = np.random.default_rng(0)
    lengths = np.array([5, 9, 3])
    prompts = np.zeros((3, 10), np.int32)
    for i, n in enumerate(lengths):
        prompts[i, :n] = rng.integers(5, 40, n)
    nxt = rng.integers(5, 40, (3, 6)).astype(np.int32)
    cached = np.asarray(cached_logits_jit(graphdef, params, jnp.asarray(prompts), jnp.asarray(lengths), jnp.asarray(nxt)))
    model = nnx.merge(graphdef, params)
    for i, n in enumerate(lengths):
        full_seq = np.concatenate([prompts[i, :n], nxt[i]])[None]
        full = np.asarray(model(jnp.asarray(full_seq)))[0]
        np.testing.assert_allclose(cached[i], full[n:n + 6], atol=2e-4, rtol=2e-4)


def test_pooled_representation_ignores_padding_and_reads_the_last_real_token():
    cfg, graphdef, params = _model()
    seq = np.array([[2, 7, 9, 11, 0, 0, 0, 0]], np.int32)
    other = seq.copy()
    other[0, 4:] = [13, 14, 15, 16]  # what follows the last real token must not matter
    a = np.asarray(pooled_jit(graphdef, params, jnp.asarray(seq), jnp.asarray([4])))
    b = np.asarray(pooled_jit(graphdef, params, jnp.asarray(other), jnp.asarray([4])))
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = np.asarray(pooled_jit(graphdef, params, jnp.asarray(other), jnp.asarray([8])))
    assert not np.allclose(a, c)


def test_sampling_never_emits_banned_tokens_and_is_seeded():
    cfg, graphdef, params = _model()
    prompts = np.array([[2, 7, 9, 0], [2, 8, 0, 0]], np.int32)
    kw = dict(k=4, max_new=12, banned=(0, 2, 4))
    a = sample_continuations(graphdef, params, prompts, [3, 2], key=jax.random.key(1), **kw)
    b = sample_continuations(graphdef, params, prompts, [3, 2], key=jax.random.key(1), **kw)
    assert a.shape == (2, 4, 12)
    np.testing.assert_array_equal(a, b)
    assert not np.isin(a, [0, 2, 4]).any()
    assert len({tuple(r) for r in a.reshape(8, 12)}) > 1  # K distinct futures


class _Tok:
    """The few tokenizer attributes zero-shot reads: two time bins (1d-7d, 7d+) and four codes."""
    vocab = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "TIME//1d-7d", "TIME//7d+", "DEATH", "DISCHARGE", "LAB"]
    vocab_size = len(vocab)
    time_base, time_tokens = 5, ["TIME//1d-7d", "TIME//7d+"]
    time_edges_us = np.array([1, 7]) * 86_400 * 1_000_000


def test_zero_shot_reads_temporal_and_event_bound_windows():
    from medscale.scaling.downstream.zero_shot import outcome_probabilities

    T1, T7, DEATH, DIS, LAB, EOS = 5, 6, 7, 8, 9, 3
    traj = np.array([[[LAB, T1, DEATH, LAB],       # death at +4 days
                      [T7, LAB, T1, DEATH],        # death at +11 days
                      [LAB, EOS, DEATH, LAB],      # death after the record ended: not an outcome
                      [LAB, LAB, LAB, LAB]]])      # window never closes: censored
    within_10d = LabelRule(CodeMatcher(frozenset(["DEATH"])), 10 * 86400, None, True, False, False)
    p, censored = outcome_probabilities(traj, within_10d, _Tok())
    assert p[0] == pytest.approx(0.25) and censored[0] == pytest.approx(0.25)
    before_discharge = LabelRule(CodeMatcher(frozenset(["DEATH"])), None,
                                 CodeMatcher(frozenset(["DEATH", "DISCHARGE"])), True, False, False)
    traj2 = np.array([[[LAB, DEATH, DIS, LAB], [DIS, LAB, DEATH, LAB], [LAB, LAB, LAB, LAB]]])
    p2, c2 = outcome_probabilities(traj2, before_discharge, _Tok())
    assert p2[0] == pytest.approx(1 / 3) and c2[0] == pytest.approx(1 / 3)
    negated = LabelRule(within_10d.label, within_10d.horizon_s, None, True, True, False)
    assert outcome_probabilities(traj, negated, _Tok())[0][0] == pytest.approx(0.75)


def test_rollouts_stop_when_every_window_has_closed_and_slide_past_max_len():
    from medscale.models.rollout import sample_until

    cfg, graphdef, params = _model()
    prompts = np.array([[2, 7, 9, 11, 12, 13, 0, 0], [2, 8, 9, 0, 0, 0, 0, 0]], np.int32)
    calls = []

    def finished(traj):
        calls.append(traj.shape[-1])
        return traj.shape[-1] >= 8
    early = sample_until(graphdef, params, prompts, [6, 3], k=3, max_new=40, key=jax.random.key(0), chunk=4,
                         finished=finished, banned=(0, 2, 4))
    assert early.shape == (2, 3, 8) and calls == [4, 8]      # stopped after two chunks, not ten

    def keep_last(tokens, lengths, keep):                        # a plain most-recent-tokens context
        out = np.zeros((len(lengths), keep), np.int32)
        new_len = np.minimum(lengths, keep)
        for i, n in enumerate(lengths):
            out[i, :new_len[i]] = tokens[i, n - new_len[i]:n]
        return out, new_len
    # prompt (8) + 40 new tokens > max_len 32: the context slides, the shapes stay fixed
    long = sample_until(graphdef, params, prompts, [6, 3], k=2, max_new=40, key=jax.random.key(1), chunk=8,
                        max_len=cfg.max_len, recontext=keep_last, banned=(0, 2, 4))
    assert long.shape == (2, 2, 40) and not np.isin(long, [0, 2, 4]).any()
    again = sample_until(graphdef, params, prompts, [6, 3], k=2, max_new=40, key=jax.random.key(1), chunk=8,
                         max_len=cfg.max_len, recontext=keep_last, banned=(0, 2, 4))
    np.testing.assert_array_equal(long, again)


def test_rollout_budget_is_what_the_window_holds_in_the_data_up_to_the_cap():
    import pandas as pd
    import polars as pl

    from medscale.scaling.downstream.zero_shot import rollout_budget, window_events

    t0 = np.datetime64("2020-01-01T00:00:00", "us")
    day = np.timedelta64(86400 * 10**6, "us")
    # subject 1: an event a day for 20 days, discharged on day 5; subject 2: nothing after t
    times = [t0 + i * day for i in range(1, 21)] + [t0 - day]
    codes = ["LAB"] * 4 + ["DISCHARGE"] + ["LAB"] * 15 + ["LAB"]
    events = pl.DataFrame({"subject_id": [1] * 20 + [2], "time": np.array(times), "code": codes})
    samples = pd.DataFrame({"subject_id": [1, 2], "prediction_time": [t0, t0]})
    week = LabelRule(CodeMatcher(frozenset(["DEATH"])), 7 * 86400, None, True, False, False)
    stay = LabelRule(CodeMatcher(frozenset(["DEATH"])), None, CodeMatcher(frozenset(["DISCHARGE", "DEATH"])), True,
                     False, False)
    assert window_events(events, samples, week, quantile=1.0) == 7
    assert window_events(events, samples, stay, quantile=1.0) == 5     # up to and including the discharge
    assert window_events(events, samples, stay, quantile=0.0) == 0
    b = rollout_budget(7 * 2.0, cap=512, factor=1.5)
    assert (b.tokens, b.wanted, b.capped) == (21, 21, False)
    b = rollout_budget(200.0, cap=128, factor=1.5)
    assert (b.tokens, b.wanted, b.capped) == (128, 300, True)
    assert rollout_budget(1.0, cap=128).tokens == 16
