"""Downstream evaluation: how well each trained model does on clinical tasks, against baselines.

    spec.py       the downstream spec (tasks, modes, seeds, label budgets), one schema
    evaluate.py   `evaluate_store`: samples, modes, the results table (downstream.csv)
    model.py      load a run's model, embed, fine-tune
    baselines.py  linear probe, LightGBM
    zero_shot.py  decoder rollouts scored against a task's window
"""
from medscale.scaling.downstream.spec import MODES, DownstreamSpec, load_downstream_spec

__all__ = ["MODES", "DownstreamSpec", "load_downstream_spec"]
