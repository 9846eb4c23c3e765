"""Zero-shot rollouts written as generated trajectories (scaling/downstream/trajectories.py): MEDS data schema +
prediction_time, one file per trajectory index, validated with the `meds` package, read back and turned into
the same predictions the zero-shot mode computes from the tokens."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from medscale.data.tasks import CodeMatcher, LabelRule
from medscale.data.tokenizer import EOS, Tokenizer, TokenizerConfig
from medscale.scaling.downstream import trajectories as tj


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS

    root = tmp_path_factory.mktemp("traj") / "meds"
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS).write(root)
    tables = [pq.read_table(p) for p in sorted((root / "data" / "train").glob("*.parquet"))]
    return root, Tokenizer.fit(tables, TokenizerConfig(min_count=1, n_value_bins=4))


def _tok(tokenizer, name: str) -> int:
    return tokenizer.token_id[name]


def test_tokens_decode_to_timed_meds_rows_until_eos(sample):
    _, tok = sample
    gap = tok.time_tokens[2]        # a closed bin: the clock advances by its middle
    lo, hi = tok.time_edges_us[2] / 1e6, tok.time_edges_us[3] / 1e6
    traj = [_tok(tok, "HR"), _tok(tok, "VALUE//Q2"), _tok(tok, gap), _tok(tok, "TEMP"), _tok(tok, "DISCHARGE"),
            EOS, _tok(tok, "HR")]
    rows = tj.decode_trajectory(np.array(traj), tok)
    assert [r[1] for r in rows] == ["HR", "TEMP", "DISCHARGE"]          # nothing after EOS
    assert [r[0] for r in rows] == pytest.approx([0.0, (lo + hi) / 2, (lo + hi) / 2])
    low, high = tok.value_range("HR", 2)
    assert rows[0][2] == pytest.approx((low + high) / 2) and rows[1][2] is None


@pytest.fixture(scope="module")
def rolled(sample, tmp_path_factory):
    """A random decoder's K=4 rollouts of the held-out label rows, written as trajectories."""
    from medscale.data.history import build_histories
    from medscale.data.labels import read_label_task
    from medscale.data.meds import read_meds
    from medscale.models.config import ModelConfig
    from medscale.scaling.downstream.model import fresh_params

    root, tok = sample
    labels, _ = read_label_task(root / "task_labels", "boolean_value_task", read_meds(root))
    rows = labels[labels["split"] == "held_out"].reset_index(drop=True)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=1, d_ff=32, max_len=64)
    graphdef, params = fresh_params(cfg, 0)
    hist = build_histories(root, rows, tok, 16)   # prompt + rollout fit max_len: one cache
    model = SimpleNamespace(graphdef=graphdef, params=params, cfg=cfg)
    traj = tj.rollout(model, hist.tokens_NxL, hist.lengths_N, tok, k=4, max_new=24, seed=0)
    out = tmp_path_factory.mktemp("trajectories")
    paths = tj.write_trajectories(out, "held_out", tj.trajectory_tables(traj, rows, tok))
    return rows, traj, out, paths


def test_trajectory_files_are_meds_data_plus_prediction_time(rolled, sample):
    import meds

    rows, traj, out, paths = rolled
    _, tok = sample
    assert [p.relative_to(out).as_posix() for p in paths] == [f"held_out/{k}.parquet" for k in range(4)]
    for k, table in tj.read_trajectories(out, "held_out").items():
        meds.DataSchema.validate(table)                          # the MEDS data schema (extra columns allowed)
        tj.GeneratedTrajectorySchema.validate(table)             # ... plus prediction_time
        assert table.schema.field("prediction_time").type == meds.DataSchema.schema().field("time").type
        frame = table.to_pandas()
        assert (frame["time"] >= frame["prediction_time"]).all()
        for i, row in rows.iterrows():                            # trajectory k of sample i: its event rows
            mine = frame[(frame["subject_id"] == row["subject_id"])
                         & (frame["prediction_time"] == row["prediction_time"])]
            assert len(mine) == len(tj.decode_trajectory(traj[i, k], tok))
    with pytest.raises(Exception, match="prediction_time"):
        tj.GeneratedTrajectorySchema.validate(pq.read_table(paths[0]).drop(["prediction_time"]))


@pytest.mark.parametrize("rule", [
    LabelRule(CodeMatcher(frozenset({"HR"})), horizon_s=3600.0, end=None, end_inclusive=False, negate=False,
              value_sum=False),
    LabelRule(CodeMatcher(regexes=("^TEMP$",)), horizon_s=None, end=CodeMatcher(frozenset({"DISCHARGE"})),
              end_inclusive=True, negate=True, value_sum=False),
], ids=["temporal_window", "until_discharge_negated"])
def test_predictions_read_back_from_trajectories_match_the_token_path(rolled, sample, rule):
    from medscale.scaling.downstream.zero_shot import outcome_probabilities

    rows, traj, out, _ = rolled
    _, tok = sample
    from_files = tj.trajectory_predictions(tj.read_trajectories(out, "held_out"), rows, rule)
    from_tokens, _ = outcome_probabilities(traj, rule, tok)
    np.testing.assert_allclose(from_files, from_tokens)
    assert from_files.shape == (len(rows),) and np.all((from_files >= 0) & (from_files <= 1))


def test_a_sample_with_no_rows_has_no_outcome(rolled):
    rows, _, out, _ = rolled
    rule = LabelRule(CodeMatcher(frozenset({"HR"})), 1e9, None, False, False, False)
    ghost = pd.DataFrame({"subject_id": [999], "prediction_time": [pd.Timestamp("2000-01-01")]})
    assert tj.trajectory_predictions(tj.read_trajectories(out, "held_out"), ghost, rule).tolist() == [0.0]
