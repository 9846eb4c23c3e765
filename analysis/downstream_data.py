"""What the report's downstream sections read, in one object (built by scaling/downstream/evaluate.py:
`downstream_data(store)`; a plain results DataFrame still works where only the curves are wanted)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass
class DownstreamData:
    results: pd.DataFrame                    # one label budget, seeds averaged (evaluate.saturation_input)
    draws: pd.DataFrame | None = None        # paired bootstrap draws, long (analysis/paired.py)
    subgroups: pd.DataFrame | None = None    # metrics per subgroup (analysis/subgroups.py)


def as_downstream_data(downstream) -> DownstreamData | None:
    if downstream is None or isinstance(downstream, DownstreamData):
        return downstream
    return DownstreamData(results=downstream)
