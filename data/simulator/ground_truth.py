"""The simulator's true outcome probabilities, and how to read them.

Each row of `ground_truth/<split>/<shard>.parquet` is (subject_id, prediction_time, outcome, value,
target_code): at `prediction_time` (the time of an event in the subject's data) the simulator's
probability of `outcome` (or, for `next_year_cost`, the expected value) given its full latent state.
Labels built at exactly these times with the definitions below are realized draws of these
probabilities, so `value` is the Bayes-optimal score given the latent state (an upper bound on what a
model that only sees the codes can reach).

Windows start at the prediction time: an outcome 'within H' counts events at times in
(prediction_time, prediction_time + H] for admissions/readmissions/drug starts, and
[prediction_time, prediction_time + H) for the check-up outcomes, whose events never fall on the
check-up's own minute (see `OutcomeSpec.window`).

Two outcomes differ on purpose:
- `med_start_30d` is SIMPLE: the drug start depends only on the diagnosis visit itself (the specific
  diagnosis code, the lab measured at that visit, and age over 75).
- `dx_heart_failure_1y` and `dx_ckd_1y` are LONG-HISTORY: their hazards depend on latent
  cardiometabolic risk (visible as family-history codes only in the first observed years, untreated
  LDL/blood pressure, smoking codes), diabetes duration (the first E11 code may be decades earlier)
  and years of smoking.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads

from medscale.data.simulator.codebook import codebook
from medscale.data.simulator.vocabulary import ICD_PREFIX


@dataclass(frozen=True)
class OutcomeSpec:
    name: str
    prediction_time: str    # the event at which the row is exported
    horizon_days: float
    kind: str               # 'probability' or 'expected_value'
    label: str              # how to build the realized label from the MEDS data
    window: str             # '(t, t+H]' or '[t, t+H)'
    signal: str             # 'simple', 'long_history' or 'mixed'
    codes: tuple[str, ...] = ()   # codes whose occurrence in the window is the outcome (empty: see label)


_ONSET_DISEASES = {
    "diabetes_t2": ("diabetes_t2", "mixed"), "hypertension": ("hypertension", "mixed"),
    "ckd": ("ckd", "long_history"), "heart_failure": ("heart_failure", "long_history"),
    "cad": ("cad", "long_history"), "atrial_fibrillation": ("atrial_fibrillation", "mixed"),
    "copd": ("copd", "long_history"),
}


def _family_codes(family: str) -> tuple[str, ...]:
    cb = codebook()
    return tuple(cb.codes[i] for i in cb.family_ids[family])


def outcome_specs() -> list[OutcomeSpec]:
    specs = [
        OutcomeSpec("in_hospital_death", "ADMISSION//INPATIENT", 60.0, "probability",
                    "MEDS_DEATH before this admission's discharge (stays last at most 60 days)", "(t, t+H]",
                    "mixed", ("MEDS_DEATH",)),
        OutcomeSpec("long_stay_7d", "ADMISSION//INPATIENT", 60.0, "probability",
                    "the stay (to DISCHARGE//* or MEDS_DEATH) lasts more than 7 days", "(t, t+H]", "mixed"),
        OutcomeSpec("readmission_30d", "DISCHARGE//HOME or DISCHARGE//SNF", 30.0, "probability",
                    "an ADMISSION//INPATIENT within 30 days after discharge", "(t, t+H]", "mixed",
                    ("ADMISSION//INPATIENT",)),
        OutcomeSpec("med_start_30d", "a first diagnosis code of a treatable chronic disease", 30.0, "probability",
                    "the row's target_code (the disease's first-line drug) within 30 days", "(t, t+H]", "simple"),
        OutcomeSpec("next_year_cost", "ENCOUNTER//WELLNESS (yearly check-up)", 365.0, "expected_value",
                    "sum of COST//CLAIMS numeric_value within the next 365 days", "[t, t+H)", "mixed",
                    ("COST//CLAIMS",)),
    ]
    for name, (family, signal) in _ONSET_DISEASES.items():
        specs.append(OutcomeSpec(f"dx_{name}_1y", "ENCOUNTER//WELLNESS (yearly check-up)", 365.0, "probability",
                                 f"any {ICD_PREFIX}code of the {family} family within 365 days; rows exist only "
                                 "for subjects without that disease at the check-up", "[t, t+H)", signal,
                                 _family_codes(family)))
    return specs


# Order fixes the integer ids used inside the simulator (sim_cohort.OUT_*).
OUTCOME_NAMES = [s.name for s in outcome_specs()]


def outcome_spec(name: str) -> OutcomeSpec:
    for spec in outcome_specs():
        if spec.name == name:
            return spec
    raise KeyError(f"unknown outcome {name!r}; known: {', '.join(OUTCOME_NAMES)}")


def outcomes_table() -> dict:
    return {"outcomes": [asdict(s) for s in outcome_specs()]}


def read_ground_truth(meds_root, *, split: str | None = None, outcome: str | None = None) -> pd.DataFrame:
    """Ground-truth rows of a simulated cohort, optionally one split and/or one outcome.

    Columns: subject_id int64, prediction_time datetime64[us], outcome str, value float64,
    target_code str (None except for med_start_30d). Sorted by subject_id, prediction_time, outcome.
    """
    from medscale.data.meds import MedsError  # noqa: PLC0415  (meds imports this module's neighbours)

    base = Path(meds_root) / "ground_truth"
    if not base.is_dir():
        raise MedsError(f"{meds_root} has no ground_truth/ folder: ground truth exists only for cohorts written by "
                        "generate_cohort (medscale generate).")
    if outcome is not None:
        outcome_spec(outcome)
    folder = base / split if split else base
    files = sorted(str(p) for p in folder.rglob("*.parquet"))
    if not files:
        raise MedsError(f"no ground-truth files under {folder}" + (f" (is {split!r} a split?)" if split else ""))
    ds = pads.dataset(files, format="parquet")
    flt = (pads.field("outcome") == outcome) if outcome else None
    df = ds.to_table(filter=flt).to_pandas()
    return df.sort_values(["subject_id", "prediction_time", "outcome"], kind="stable").reset_index(drop=True)
