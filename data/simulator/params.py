"""Numbers that define the simulated world: diseases, their hazards and interactions, admission reasons.

Hazards are per year and log-linear: log h = log(base) + age_slope*(age-50)/10 + male*male_effect
+ cardio*z_cardio + smoke*smoking_decades + sum_j interaction[d, j]*has_j (+ diabetes duration terms).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MINUTES_PER_DAY = 1440
YEAR = 365 * MINUTES_PER_DAY          # one simulator year, in minutes; every 1-year horizon uses it
CUTOFF = 55 * 365 * MINUTES_PER_DAY + 13 * MINUTES_PER_DAY   # 2025-01-01 in minutes since 1970-01-01
MAX_AGE = 100
OBSERVED_YEARS = (1, 25)              # follow-up length, uniform (capped by age)


@dataclass(frozen=True)
class Disease:
    name: str
    family: str
    base: float            # yearly hazard at age 50, female, no risk factors
    age_slope: float       # log-hazard change per decade of age
    male: float = 0.0
    cardio: float = 0.0    # per SD of the latent cardiometabolic risk
    smoke: float = 0.0     # per decade of smoking
    child: float = 0.05    # hazard multiplier before age 18
    first_line: str | None = None      # ATC code started after the diagnosis (the 'simple' outcome)
    onset_lab: str | None = None       # LOINC measured at the diagnosis visit
    lab_center: float = 0.0            # (value - center) / scale drives the prescribing decision
    lab_scale: float = 1.0
    treat_logit: float = 0.5           # base log-odds of starting first_line within 30 days
    admit: float = 0.0                 # log admission-rate effect
    death: float = 0.0                 # log out-of-hospital death hazard effect
    cost: float = 0.0                  # log yearly cost effect
    major: bool = False                # counts towards multimorbidity in hospital outcomes


DISEASES: list[Disease] = [
    Disease("hypertension", "hypertension", 0.030, 0.35, 0.1, 0.35, 0.05, 0.02, "C09AA05", "8480-6", 140, 15, 0.6, cost=0.1),
    Disease("hyperlipidemia", "hyperlipidemia", 0.025, 0.25, 0.15, 0.80, 0.0, 0.02, "C10AA05", "13457-7", 150, 30, 0.4, cost=0.05),
    Disease("diabetes_t2", "diabetes_t2", 0.008, 0.30, 0.15, 0.55, 0.05, 0.02, "A10BA02", "4548-4", 7.5, 1.0, 0.3,
            admit=0.3, death=0.3, cost=0.4, major=True),
    Disease("obesity", "obesity", 0.012, 0.05, -0.1, 0.40, 0.0, 0.3),
    Disease("ckd", "ckd", 0.0025, 0.60, 0.1, 0.30, 0.05, 0.02, "C09CA01", "33914-3", 50, 15, -0.2,
            admit=0.5, death=0.5, cost=0.6, major=True),
    Disease("heart_failure", "heart_failure", 0.0012, 0.70, 0.3, 0.55, 0.15, 0.01, "C07AB07", "30934-4", 6.0, 0.7, 0.7,
            admit=0.9, death=0.8, cost=0.8, major=True),
    Disease("cad", "cad", 0.0035, 0.55, 0.6, 0.75, 0.20, 0.01, "B01AC06", "13457-7", 130, 30, 0.9,
            admit=0.4, death=0.3, cost=0.4, major=True),
    Disease("atrial_fibrillation", "atrial_fibrillation", 0.0020, 0.75, 0.3, 0.15, 0.0, 0.01, "B01AF02", None, 0, 1, 0.5,
            admit=0.3, death=0.3, cost=0.3, major=True),
    Disease("copd", "copd", 0.0008, 0.45, 0.1, 0.0, 0.55, 0.01, "R03BB04", "19926-5", 65, 8, 0.6,
            admit=0.6, death=0.5, cost=0.4, major=True),
    Disease("asthma", "asthma", 0.0030, -0.15, -0.2, 0.0, 0.1, 1.5, "R03BA02", "19926-5", 72, 6, 1.0, admit=0.2, cost=0.2),
    Disease("depression", "depression", 0.0100, -0.05, -0.5, 0.0, 0.05, 0.2, "N06AB06", None, 0, 1, 0.0, cost=0.2),
    Disease("hypothyroidism", "hypothyroidism", 0.0025, 0.15, -1.2, 0.0, 0.0, 0.1, "H03AA01", "3016-3", 1.8, 0.4, 0.8),
    Disease("osteoarthritis", "osteoarthritis", 0.0100, 0.45, -0.3, 0.0, 0.0, 0.01, "M01AE01", None, 0, 1, -0.3, cost=0.2),
    Disease("gerd", "gerd", 0.0080, 0.10, 0.0, 0.1, 0.1, 0.1, "A02BC01", None, 0, 1, 0.4),
    Disease("cancer", "cancer", 0.0030, 0.55, 0.2, 0.0, 0.25, 0.02, None, None,
            admit=0.7, death=1.2, cost=1.0, major=True),
]
D = len(DISEASES)
IDX = {d.name: i for i, d in enumerate(DISEASES)}


def interaction_matrix() -> np.ndarray:
    """W[d, j]: log-hazard added to disease d's onset when disease j is present at the start of the year."""
    w = np.zeros((D, D))
    pairs = {
        ("hypertension", "obesity"): 0.7, ("hypertension", "diabetes_t2"): 0.4, ("hypertension", "ckd"): 0.6,
        ("hyperlipidemia", "obesity"): 0.4, ("hyperlipidemia", "diabetes_t2"): 0.4,
        ("diabetes_t2", "obesity"): 1.1, ("diabetes_t2", "hyperlipidemia"): 0.3, ("diabetes_t2", "hypertension"): 0.3,
        ("ckd", "hypertension"): 0.7, ("ckd", "heart_failure"): 0.5, ("ckd", "diabetes_t2"): 0.3,
        ("heart_failure", "cad"): 1.0, ("heart_failure", "atrial_fibrillation"): 0.8, ("heart_failure", "hypertension"): 0.5,
        ("heart_failure", "ckd"): 0.6, ("heart_failure", "diabetes_t2"): 0.3, ("heart_failure", "copd"): 0.3,
        ("cad", "diabetes_t2"): 0.5, ("cad", "hypertension"): 0.4, ("cad", "hyperlipidemia"): 0.4, ("cad", "ckd"): 0.3,
        ("atrial_fibrillation", "hypertension"): 0.5, ("atrial_fibrillation", "heart_failure"): 0.9,
        ("atrial_fibrillation", "obesity"): 0.4, ("atrial_fibrillation", "cad"): 0.3,
        ("copd", "asthma"): 0.8, ("depression", "cancer"): 0.6, ("depression", "heart_failure"): 0.4,
        ("depression", "copd"): 0.3, ("osteoarthritis", "obesity"): 0.7, ("gerd", "obesity"): 0.5,
    }
    for (d, j), v in pairs.items():
        w[IDX[d], IDX[j]] = v
    return w


# Years since the diabetes diagnosis raise these log-hazards per year of duration (capped at
# DIABETES_DURATION_CAP years): the slow microvascular damage that makes CKD and heart failure a
# long-history outcome.
DIABETES_DURATION = {"ckd": 0.07, "heart_failure": 0.04, "cad": 0.02}
DIABETES_DURATION_CAP = 25.0
STATIN_PROTECTION = {"cad": -0.35, "heart_failure": -0.15}      # log-hazard while on atorvastatin
ANTIHYPERTENSIVE_PROTECTION = {"ckd": -0.25, "heart_failure": -0.25, "atrial_fibrillation": -0.1}


@dataclass(frozen=True)
class Reason:
    name: str
    code: str | None        # ICD-10-CM admitting diagnosis (None: the patient's own code for `requires`)
    weight: float           # base weight among admission reasons
    requires: str | None = None   # only patients with this chronic disease
    boosts: tuple[tuple[str, float], ...] = ()
    death: float = -4.5     # base logit of in-hospital death
    long_stay: float = -2.0  # base logit of a stay longer than 7 days
    readmit: float = -2.3   # base logit of readmission within 30 days of discharge
    labs: tuple[str, ...] = ()
    procedures: tuple[tuple[str, float], ...] = ()
    drugs: tuple[str, ...] = ()
    infection: bool = False


REASONS: list[Reason] = [
    Reason("hf_exacerbation", None, 3.0, "heart_failure", death=-3.1, long_stay=-1.2, readmit=-1.5,
           labs=("30934-4",), procedures=(("93306", 0.5), ("71046", 0.6)), drugs=("C03CA01",)),
    Reason("copd_exacerbation", "J44.1", 3.0, "copd", death=-3.6, long_stay=-1.6, readmit=-1.6,
           procedures=(("71046", 0.7),), drugs=("H02AB06",)),
    Reason("cancer_complication", None, 2.0, "cancer", death=-2.4, long_stay=-0.8, readmit=-1.4,
           procedures=(("74177", 0.5),), drugs=("N02AA01",)),
    Reason("pneumonia", "J18.9", 1.0, boosts=(("copd", 0.8), ("heart_failure", 0.4)), death=-3.1, long_stay=-1.3,
           labs=("6690-2",), procedures=(("71046", 0.9),), drugs=("J01DD04",), infection=True),
    Reason("sepsis", "A41.9", 0.5, boosts=(("diabetes_t2", 0.5), ("ckd", 0.5), ("cancer", 0.8)), death=-2.0,
           long_stay=-0.5, labs=("6690-2", "2524-7"), procedures=(("36556", 0.5), ("31500", 0.2)), drugs=("J01DD04",),
           infection=True),
    Reason("acute_kidney_injury", "N17.9", 0.4, boosts=(("ckd", 1.5), ("heart_failure", 0.5)), death=-3.3, readmit=-1.9),
    Reason("myocardial_infarction", "I21.4", 0.4, boosts=(("cad", 1.5), ("diabetes_t2", 0.4)), death=-2.6,
           long_stay=-1.5, labs=("10839-9",), procedures=(("93458", 0.8), ("92928", 0.6), ("93000", 1.0)),
           drugs=("C07AB02", "C10AA01")),
    Reason("stroke", "I63.9", 0.35, boosts=(("atrial_fibrillation", 1.2), ("hypertension", 0.4)), death=-2.6,
           long_stay=-0.3, procedures=(("70450", 1.0),)),
    Reason("hip_fracture", "S72.001A", 0.25, boosts=(("osteoarthritis", 0.3),), death=-3.3, long_stay=0.0,
           procedures=(("27236", 0.9),), drugs=("B01AB05",)),
    Reason("gi_bleed", "K92.2", 0.3, boosts=(("atrial_fibrillation", 0.8), ("gerd", 0.5)), death=-3.3,
           procedures=(("43239", 0.8),)),
    Reason("urinary_tract_infection", "N39.0", 0.5, death=-4.3, labs=("6690-2",), drugs=("J01MA02",), infection=True),
    Reason("cellulitis", "L03.90", 0.4, boosts=(("diabetes_t2", 0.6), ("obesity", 0.5)), death=-5.0,
           labs=("6690-2",), drugs=("J01CR02",), infection=True),
    Reason("hyponatremia", "E87.1", 0.2, boosts=(("heart_failure", 0.6),), death=-4.0),
]
R = len(REASONS)
RIDX = {r.name: i for i, r in enumerate(REASONS)}

# Acute outpatient / ED diagnosis families and their mixture weights.
OUTPATIENT_ACUTE = {"respiratory_acute": 0.28, "infection": 0.14, "symptom": 0.14, "musculoskeletal": 0.2,
                    "skin_eye_ent": 0.14, "mental_other": 0.06, "injury": 0.04}
ED_ACUTE = {"symptom": 0.4, "injury": 0.35, "infection": 0.15, "respiratory_acute": 0.1}
