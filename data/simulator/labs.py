"""Lab and vital-sign values as functions of the simulated disease and treatment state."""
from __future__ import annotations

import numpy as np

# Labs whose prescribing signal is read on the log scale.
LOG_SCALE_LABS = {"30934-4", "3016-3"}
LOW_IS_WORSE = {"33914-3", "19926-5"}  # eGFR, FEV1/FVC

ROUND = {"4548-4": 1, "2160-0": 2, "10839-9": 3, "2524-7": 1, "2823-3": 1, "6690-2": 1, "718-7": 1, "3016-3": 2,
         "39156-5": 1}
CKD_CREATININE_FACTOR = np.array([1.0, 1.0, 1.15, 1.7, 2.8, 4.8])  # by CKD stage (0 = no CKD)


class LabContext:
    """Flags for the acute situation in which a lab is drawn (all False at routine visits)."""

    def __init__(self, n: int, **flags: np.ndarray | bool) -> None:
        self.n = n
        self.flags = {k: np.broadcast_to(np.asarray(v, dtype=bool), (n,)) for k, v in flags.items()}

    def __getattr__(self, name: str) -> np.ndarray:
        flags = self.__dict__.get("flags", {})
        return flags.get(name, np.zeros(self.__dict__.get("n", 0), dtype=bool))


def lab_values(loinc: str, s, rows: np.ndarray, age: np.ndarray, rng: np.random.Generator,
               ctx: LabContext | None = None) -> np.ndarray:
    """Values of lab `loinc` for patients `rows` of state `s` (a ShardState) at the given ages."""
    n = rows.size
    ctx = ctx or LabContext(n)
    has = lambda name: s.has[rows, s.D_IDX[name]].astype(np.float64)  # noqa: E731
    on = lambda atc: s.on[rows, s.M_IDX[atc]].astype(np.float64)  # noqa: E731
    male = s.male[rows].astype(np.float64)
    z = rng.standard_normal(n)
    if loinc == "4548-4" or loinc == "2345-7":
        dm = has("diabetes_t2")
        years = np.nan_to_num(np.clip(age - s.onset_age[rows, s.D_IDX["diabetes_t2"]], 0, 30))
        a1c = (5.3 + 0.12 * s.z_cardio[rows] + 0.3 * has("obesity")
               + dm * (2.1 + 0.04 * years - 0.8 * on("A10BA02") - 0.7 * np.maximum(on("A10BK01"), on("A10BJ06"))
                       - 0.8 * on("A10AE04")) + 0.35 * z)
        a1c = np.clip(a1c, 4.0, 15.0)
        v = a1c if loinc == "4548-4" else np.clip(28.7 * a1c - 46.7 + 12 * rng.standard_normal(n), 50, 600)
    elif loinc == "13457-7":
        statin = np.maximum(on("C10AA05"), on("C10AA01"))
        v = np.clip(112 + 24 * s.z_cardio[rows] + 25 * has("hyperlipidemia") - 45 * statin + 18 * z, 30, 320)
    elif loinc == "2085-9":
        v = np.clip(54 - 7 * male - 5 * has("obesity") - 3 * s.z_cardio[rows] + 10 * z, 15, 120)
    elif loinc == "2571-8":
        v = np.exp(np.log(125) + 0.3 * has("obesity") + 0.25 * has("diabetes_t2") + 0.1 * s.z_cardio[rows] + 0.3 * z)
    elif loinc == "2160-0" or loinc == "33914-3":
        cr = ((0.82 + 0.17 * male) * CKD_CREATININE_FACTOR[s.ckd_stage[rows]] * np.exp(0.08 * z)
              * np.where(ctx.aki, 1.9, 1.0))
        if loinc == "2160-0":
            v = cr
        else:  # MDRD study equation from the same creatinine
            v = np.clip(175 * cr ** -1.154 * np.maximum(age, 18) ** -0.203 * np.where(male > 0, 1.0, 0.742), 3, 150)
    elif loinc == "30934-4":
        v = np.exp(np.log(25) + 0.02 * (age - 50) + 2.6 * has("heart_failure") + 0.9 * ctx.hf_exacerbation
                   + 0.5 * has("ckd") + 0.3 * has("atrial_fibrillation") - 0.3 * on("C07AB07") + 0.5 * z)
    elif loinc == "8480-6" or loinc == "8462-4":
        n_anti = on("C09AA05") + on("C08CA01") + on("C09CA01") + 0.5 * on("C07AB07")
        sbp = np.clip(116 + 0.3 * np.maximum(age - 30, 0) + 18 * has("hypertension") - 9 * n_anti
                      + 4 * s.z_cardio[rows] + 11 * z, 80, 230)
        v = sbp if loinc == "8480-6" else np.clip(0.5 * sbp + 15 + 6 * rng.standard_normal(n), 40, 140)
    elif loinc == "39156-5":
        v = np.clip(25.5 + 7.5 * has("obesity") + 1.2 * s.z_cardio[rows] + s.bmi_offset[rows] + 0.8 * z, 14, 65)
    elif loinc == "718-7":
        v = np.clip(13.0 + 1.4 * male - 0.7 * (s.ckd_stage[rows] >= 3) - 1.0 * has("cancer")
                    - 2.8 * ctx.gi_bleed + 0.9 * z, 5, 19)
    elif loinc == "2823-3":
        v = np.clip(4.2 + 0.3 * (s.ckd_stage[rows] >= 3) + 0.35 * z, 2.5, 7)
    elif loinc == "2951-2":
        v = np.round(np.clip(139.5 - 8 * ctx.hyponatremia - 1.5 * has("heart_failure") + 2.5 * z, 110, 155))
    elif loinc == "6690-2":
        v = np.exp(np.log(7) + 0.55 * ctx.infection + 0.25 * z)
    elif loinc == "10839-9":
        v = np.exp(np.log(0.012) + 4.8 * ctx.myocardial_infarction + 0.6 * has("ckd") + 0.6 * z)
    elif loinc == "3016-3":
        untreated = has("hypothyroidism") * (1 - on("H03AA01"))
        v = np.exp(np.log(1.9) + 1.6 * untreated + 0.3 * has("hypothyroidism") * on("H03AA01") + 0.4 * z)
    elif loinc == "2524-7":
        v = np.clip(1.2 + 2.6 * ctx.sepsis + 0.5 * np.abs(z), 0.4, 15)
    elif loinc == "1742-6":
        v = np.exp(np.log(24) + 0.35 * has("obesity") + 0.35 * z)
    elif loinc == "19926-5":
        v = np.clip(79 - 17 * has("copd") - 8 * has("asthma") - 0.25 * s.smoke_years(rows, age) + 5 * z, 25, 95)
    else:
        raise KeyError(loinc)
    decimals = ROUND.get(loinc, 0)
    return np.round(v, decimals).astype(np.float32)


def prescribing_signal(loinc: str, values: np.ndarray, center: float, scale: float) -> np.ndarray:
    """Standardized lab value that drives the decision to start first-line treatment."""
    v = np.log(np.maximum(values.astype(np.float64), 1e-6)) if loinc in LOG_SCALE_LABS else values.astype(np.float64)
    if loinc in LOW_IS_WORSE:
        return (center - v) / scale
    return (v - center) / scale
