"""grain loader: batches depend only on (seed, step); shapes; next-event shift; BERT masking statistics."""
import numpy as np
import pytest

from medscale.data.loader import eval_batches, train_batches
from medscale.data.token_store import TokenWindows
from medscale.data.tokenizer import MASK, N_SPECIAL, PAD, Tokenizer

KEYS = ("inputs", "targets", "weights", "segment_ids")


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in KEYS)


@pytest.mark.parametrize("objective", ["next_event", "masked_event"])
def test_batches_depend_only_on_seed_and_step(tiny_dataset, objective):
    _, token_dir = tiny_dataset
    kw = dict(seq_len=32, batch_size=4, objective=objective)
    a = train_batches(token_dir, "train", seed=3, **kw)
    b = train_batches(token_dir, "train", seed=3, **kw)
    other = train_batches(token_dir, "train", seed=4, **kw)
    steps = [0, 1, 7, 123, 5000]
    first = [a[s] for s in steps]
    resumed = [b[s] for s in reversed(steps)][::-1]   # any access order: resume at step k is just ds[k]
    assert all(same(x, y) for x, y in zip(first, resumed))
    assert not same(a[7], other[7])
    for k in KEYS:
        assert first[0][k].shape == (4, 32)
    assert first[0]["inputs"].dtype == np.int32 and first[0]["weights"].dtype == np.float32


def test_next_event_targets_are_the_shifted_window(tiny_dataset):
    _, token_dir = tiny_dataset
    windows = TokenWindows(token_dir, "train", 32)
    seen = {windows[i]["tokens"].tobytes(): i for i in range(len(windows))}
    batch = train_batches(token_dir, "train", seq_len=32, batch_size=8, objective="next_event", seed=0)[2]
    for row in range(8):
        full = np.r_[batch["inputs"][row], batch["targets"][row][-1]].astype(np.int32)
        i = seen[full.tobytes()]
        assert np.array_equal(batch["targets"][row], windows[i]["tokens"][1:])
        assert np.array_equal(batch["segment_ids"][row], windows[i]["segment_ids"][:-1])
    assert np.array_equal(batch["weights"], (batch["targets"] != PAD).astype(np.float32))


def test_each_epoch_visits_every_window_once_in_a_new_order(tiny_dataset):
    _, token_dir = tiny_dataset
    n = len(TokenWindows(token_dir, "tuning", 16))
    ds = train_batches(token_dir, "tuning", seq_len=16, batch_size=1, objective="next_event", seed=9)
    epoch = lambda e: [ds[e * n + i]["inputs"][0].tobytes() for i in range(n)]  # noqa: E731
    e0, e1 = epoch(0), epoch(1)
    assert sorted(e0) == sorted(e1) and len(set(e0)) == len(set(e0 + e1))
    assert e0 != e1


def test_masking_statistics(tiny_dataset):
    _, token_dir = tiny_dataset
    vocab = Tokenizer.load(token_dir).vocab_size
    ds = train_batches(token_dir, "train", seq_len=64, batch_size=16, objective="masked_event", seed=1,
                       mask_prob=0.15)
    chosen = maskable = n_mask = n_same = n_random = 0
    for step in range(40):
        b = ds[step]
        w = b["weights"] > 0
        orig, inp = b["targets"], b["inputs"]
        assert (orig[w] >= N_SPECIAL).all()               # specials are never chosen
        assert np.array_equal(inp[~w], orig[~w])          # unchosen positions untouched
        assert (inp < vocab).all()
        chosen += w.sum()
        maskable += (orig >= N_SPECIAL).sum()
        n_mask += (inp[w] == MASK).sum()
        n_same += (inp[w] == orig[w]).sum()
        n_random += ((inp[w] != MASK) & (inp[w] != orig[w])).sum()
    assert abs(chosen / maskable - 0.15) < 0.01
    assert abs(n_mask / chosen - 0.8) < 0.03
    assert abs((n_same + n_random) / chosen - 0.2) < 0.03
    assert n_random / chosen > 0.07                        # ~10% random (a few land on the original)


def test_eval_batches_are_a_fixed_list(tiny_dataset):
    _, token_dir = tiny_dataset
    kw = dict(seq_len=32, batch_size=4, objective="masked_event", n_batches=3)
    a = eval_batches(token_dir, "tuning", **kw)
    b = eval_batches(token_dir, "tuning", **kw)
    assert len(a) == 3 and all(same(x, y) for x, y in zip(a, b))
    assert not same(a[0], a[1])


def test_bad_arguments(tiny_dataset):
    _, token_dir = tiny_dataset
    with pytest.raises(ValueError, match="objective"):
        train_batches(token_dir, "train", seq_len=8, batch_size=2, objective="causal", seed=0)
    with pytest.raises(ValueError, match="no tokens for split 'test'"):
        train_batches(token_dir, "test", seq_len=8, batch_size=2, objective="next_event", seed=0)
    with pytest.raises(ValueError, match="fewer than one window"):
        train_batches(token_dir, "tuning", seq_len=10**8, batch_size=2, objective="next_event", seed=0)
