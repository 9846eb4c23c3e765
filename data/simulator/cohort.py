"""The generative process for one shard of patients, vectorized across patients, looped over years.

Each patient's life is cut into simulator years [a_k, a_k + YEAR) starting at anchor a_k = birth +
phase + k years. Every rate and hazard of year k is computed from the state at a_k and held
constant for the year; new diagnoses, treatments and CKD progression drawn in year k change the state
only from a_{k+1}. That is what makes the exported ground truth exact:

- yearly check-up at a_k: P(new diagnosis of d in [a_k, a_k + YEAR)) = 1 - exp(-h_d), and the
  expected total of COST//CLAIMS in that year is the mean m_k of the year's Gamma-distributed cost.
- admission: P(death before discharge) and P(stay > 7 days) are drawn at admission.
- discharge: P(an admission within 30 days) is drawn at discharge; no other admission may start in
  the 31 days after any discharge (background admissions are pushed past that window).
- new diagnosis with a first-line drug: P(that drug starts within 30 days) is drawn at diagnosis.

Death never erases a committed draw: a drawn diagnosis, drug start or claim that would fall after
death is recorded at the death time (see sim_events.KEEP), and an out-of-hospital death happens
after the year's hospital stays and never while a committed readmission is pending. Prediction times
whose horizon runs past the end of follow-up are not exported.

Long-range structure: latent cardiometabolic risk (z_cardio) shows early as family-history codes
(only in the first observed years), LDL and blood pressure before treatment, and smoking codes, and
decades later drives CKD, heart failure and coronary disease together with diabetes duration and
smoking years. Latent frailty drives admissions, in-hospital outcomes and cost; engagement drives
visit rates and check-ups.
"""
from __future__ import annotations

import numpy as np

from medscale.data.simulator import params as P
from medscale.data.simulator.ground_truth import OUTCOME_NAMES
from medscale.data.simulator.codebook import FAMILY_HEAD, CodeBook
from medscale.data.simulator.events import AMBULATORY, KEEP, NORMAL, EventBuffer, GroundTruthBuffer, finalize
from medscale.data.simulator.labs import LabContext, lab_values, prescribing_signal
from medscale.data.simulator.vocabulary import MEDICATIONS

DAY = P.MINUTES_PER_DAY
MED_LIST = list(MEDICATIONS)
EXPORTED_ONSETS = ["diabetes_t2", "hypertension", "ckd", "heart_failure", "cad", "atrial_fibrillation", "copd"]

# Outcome ids in the ground-truth table (names and semantics live in data/ground_truth.py).
OUT_IN_HOSPITAL_DEATH, OUT_LONG_STAY, OUT_READMISSION, OUT_MED_START, OUT_COST = (
    OUTCOME_NAMES.index(name) for name in
    ("in_hospital_death", "long_stay_7d", "readmission_30d", "med_start_30d", "next_year_cost"))
OUT_ONSET = {name: OUTCOME_NAMES.index(f"dx_{name}_1y") for name in EXPORTED_ONSETS}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class ShardState:
    """Per-patient arrays of one shard."""

    D_IDX = P.IDX
    M_IDX = {atc: i for i, atc in enumerate(MED_LIST)}

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n = n
        self.male = rng.random(n) < 0.48
        kids = rng.random(n) < 0.12
        age_end = np.where(kids, rng.uniform(1.2, 18, n), 18 + 79 * rng.beta(2.0, 2.0, n))
        self.phase = rng.integers(0, P.YEAR, n).astype(np.float64)
        birth = np.round(P.CUTOFF - age_end * 365.25 * DAY)
        self.birth = birth
        self.anchor0 = birth + self.phase
        self.k_end = np.floor((P.CUTOFF - self.anchor0) / P.YEAR).astype(np.int64) - 1
        years = rng.integers(P.OBSERVED_YEARS[0], P.OBSERVED_YEARS[1] + 1, n)
        self.k0 = np.maximum(self.k_end - years + 1, 0)
        self.followup_end = self.anchor0 + (self.k_end + 1) * P.YEAR
        self.z_cardio = rng.standard_normal(n)
        self.z_frail = rng.standard_normal(n)
        self.engage = rng.standard_normal(n)
        self.bmi_offset = 2.0 * rng.standard_normal(n)
        self.fh_cad = self.z_cardio + 0.7 * rng.standard_normal(n) > 1.0
        self.fh_dm = self.z_cardio + 0.9 * rng.standard_normal(n) > 1.1
        smokes = rng.random(n) < sigmoid(-1.0 + 0.6 * self.z_cardio)
        self.smoke_start = np.where(smokes, rng.uniform(14, 25, n), np.inf)
        self.smoke_stop = np.where(smokes, self.smoke_start + rng.exponential(22, n), np.inf)
        self.has = np.zeros((n, P.D), dtype=bool)
        self.onset_age = np.full((n, P.D), np.nan)
        self.spec = np.zeros((n, P.D), dtype=np.int32)  # patient's own code id for each disease
        self.ckd_stage = np.zeros(n, dtype=np.int64)
        self.ckd_sub = rng.integers(0, 3, n)
        self.on = np.zeros((n, len(MED_LIST)), dtype=bool)
        self.alive = np.ones(n, dtype=bool)
        self.death = np.full(n, np.inf)
        self.blocked_until = np.full(n, -np.inf)
        self.pending = np.full(n, np.inf)      # committed readmission time
        self.pending_reason = np.zeros(n, dtype=np.int64)

    def smoke_years(self, rows: np.ndarray, age: np.ndarray) -> np.ndarray:
        start = self.smoke_start[rows]
        return np.clip(np.minimum(age, self.smoke_stop[rows]) - start, 0, None) if rows.size else np.zeros(0)

    def smoking_now(self, rows: np.ndarray, age: np.ndarray) -> np.ndarray:
        return (age >= self.smoke_start[rows]) & (age < self.smoke_stop[rows])

    def n_major(self, rows: np.ndarray) -> np.ndarray:
        return self.has[rows][:, MAJOR].sum(axis=1)


MAJOR = np.array([d.major for d in P.DISEASES])
W = P.interaction_matrix()
BASE = np.log([d.base for d in P.DISEASES])
AGE_SLOPE = np.array([d.age_slope for d in P.DISEASES])
MALE = np.array([d.male for d in P.DISEASES])
CARDIO = np.array([d.cardio for d in P.DISEASES])
SMOKE = np.array([d.smoke for d in P.DISEASES])
CHILD = np.log([d.child for d in P.DISEASES])
ADMIT = np.array([d.admit for d in P.DISEASES])
DEATH = np.array([d.death for d in P.DISEASES])
COST = np.array([d.cost for d in P.DISEASES])
DM_DURATION = np.array([P.DIABETES_DURATION.get(d.name, 0.0) for d in P.DISEASES])
STATIN = np.array([P.STATIN_PROTECTION.get(d.name, 0.0) for d in P.DISEASES])
ANTIHTN = np.array([P.ANTIHYPERTENSIVE_PROTECTION.get(d.name, 0.0) for d in P.DISEASES])
REASON_BASE = np.log([r.weight for r in P.REASONS])
REASON_REQUIRES = np.array([P.IDX[r.requires] if r.requires else -1 for r in P.REASONS])
REASON_BOOST = np.zeros((P.R, P.D))
for _i, _r in enumerate(P.REASONS):
    for _name, _v in _r.boosts:
        REASON_BOOST[_i, P.IDX[_name]] = _v
REASON_DEATH = np.array([r.death for r in P.REASONS])
REASON_LONG = np.array([r.long_stay for r in P.REASONS])
REASON_READMIT = np.array([r.readmit for r in P.REASONS])


class ShardSimulator:
    def __init__(self, n: int, seed_seq: np.random.SeedSequence, cb: CodeBook) -> None:
        self.rng = np.random.default_rng(seed_seq)
        self.cb = cb
        self.s = ShardState(n, self.rng)
        self.ev = EventBuffer()
        self.gt = GroundTruthBuffer()
        self.stays: dict[str, list[np.ndarray]] = {"row": [], "start": [], "end": []}
        self._codes()

    # ----- code ids -----------------------------------------------------------------------------
    def _codes(self) -> None:
        cb = self.cb
        self.c = {name: cb.id(name) for name in ("MEDS_BIRTH", "MEDS_DEATH", "GENDER//F", "GENDER//M",
                                                  "ENCOUNTER//OUTPATIENT", "ENCOUNTER//WELLNESS", "ENCOUNTER//ED",
                                                  "ADMISSION//INPATIENT", "DISCHARGE//HOME", "DISCHARGE//SNF",
                                                  "COST//CLAIMS")}
        self.med_code = np.array([cb.med(a) for a in MED_LIST], dtype=np.int32)
        self.fam = {d.name: cb.family_ids[d.family] for d in P.DISEASES}
        self.famp = {d.name: cb.family_probs[d.family] for d in P.DISEASES}
        ckd = [["N18.2"], ["N18.30", "N18.31", "N18.32"], ["N18.4"], ["N18.5", "N18.6"]]
        table = np.zeros((6, 3), dtype=np.int32)
        for stage, names in zip((2, 3, 4, 5), ckd):
            for j in range(3):
                table[stage, j] = cb.icd(names[j % len(names)])
        table[1] = table[2]
        self.ckd_table = table
        self.first_line = np.array([self.s.M_IDX[d.first_line] if d.first_line else -1 for d in P.DISEASES])
        self.reason_code = np.array([cb.icd(r.code) if r.code else -1 for r in P.REASONS], dtype=np.int32)

    def zipf(self, family: str, n: int) -> np.ndarray:
        return self.rng.choice(self.cb.family_ids[family], size=n, p=self.cb.family_probs[family])

    def mixture(self, families: dict[str, float], n: int) -> np.ndarray:
        names = list(families)
        pick = self.rng.choice(len(names), size=n, p=np.array(list(families.values())) / sum(families.values()))
        out = np.empty(n, dtype=np.int32)
        for i, name in enumerate(names):
            sel = pick == i
            out[sel] = self.zipf(name, int(sel.sum()))
        return out

    # ----- state -> rates -------------------------------------------------------------------------
    def hazards(self, ix: np.ndarray, age: np.ndarray) -> np.ndarray:
        s = self.s
        has = s.has[ix].astype(np.float64)
        dm_years = np.nan_to_num(np.clip(age - s.onset_age[ix, P.IDX["diabetes_t2"]], 0, P.DIABETES_DURATION_CAP))
        statin = (s.on[ix, s.M_IDX["C10AA05"]] | s.on[ix, s.M_IDX["C10AA01"]]).astype(np.float64)
        antihtn = (s.on[ix, s.M_IDX["C09AA05"]] | s.on[ix, s.M_IDX["C09CA01"]]).astype(np.float64)
        log_h = (BASE + np.outer((age - 50) / 10, AGE_SLOPE) + np.outer(s.male[ix], MALE)
                 + np.outer(s.z_cardio[ix], CARDIO) + np.outer(s.smoke_years(ix, age) / 10, SMOKE)
                 + has @ W.T + np.outer(dm_years, DM_DURATION) + np.outer(statin, STATIN)
                 + np.outer(antihtn, ANTIHTN) + np.outer(age < 18, CHILD))
        return np.exp(log_h)

    def admission_rate(self, ix: np.ndarray, age: np.ndarray) -> np.ndarray:
        s = self.s
        return 0.012 * np.exp(0.03 * np.maximum(age - 45, 0) + 0.5 * s.z_frail[ix] + s.has[ix] @ ADMIT)

    def expected_cost(self, ix: np.ndarray, age: np.ndarray, adm_rate: np.ndarray) -> np.ndarray:
        s = self.s
        return 300 * np.exp(0.015 * (age - 40) + 0.3 * s.z_frail[ix] + 0.1 * s.engage[ix] + s.has[ix] @ COST) \
            + 9000 * adm_rate

    # ----- the simulation --------------------------------------------------------------------------
    def run(self):
        s = self.s
        rows = np.arange(s.n)
        self.ev.add(rows, np.nan, np.where(s.male, self.c["GENDER//M"], self.c["GENDER//F"]), prio=0)
        self.ev.add(rows, s.birth, self.c["MEDS_BIRTH"], prio=0)
        for k in range(int(s.k_end.max()) + 1):
            in_life = s.alive & (k <= s.k_end)
            latent = np.nonzero(in_life & (k < s.k0))[0]
            active = np.nonzero(in_life & (k >= s.k0))[0]
            if latent.size:
                self.year_latent(latent, k)
            if active.size:
                self.year_observed(active, k)
        stays = {key: (np.concatenate(v) if v else np.zeros(0)) for key, v in self.stays.items()}
        stays["row"] = stays["row"].astype(np.int64)
        return finalize(self.ev.arrays(), self.gt.arrays(), stays, s.death, s.followup_end)

    def year_latent(self, ix: np.ndarray, k: int) -> None:
        """A year before follow-up: diseases arise and are treated, nothing is recorded."""
        s = self.s
        age = k + s.phase[ix] / P.YEAR
        h = self.hazards(ix, age)
        new = (self.rng.random(h.shape) < -np.expm1(-h)) & ~s.has[ix]
        r, d = np.nonzero(new)
        rows = ix[r]
        treated = self.rng.random(r.size) < sigmoid(np.array([P.DISEASES[j].treat_logit for j in d]).reshape(-1) + 0.3)
        self._apply_onsets(rows, d, age[r], self.zipf_codes(d))
        fl = self.first_line[d]
        ok = treated & (fl >= 0)
        s.on[rows[ok], fl[ok]] = True
        self._progress_ckd(ix)

    def zipf_codes(self, d: np.ndarray) -> np.ndarray:
        out = np.empty(d.size, dtype=np.int32)
        for j in np.unique(d):
            sel = d == j
            name = P.DISEASES[j].name
            out[sel] = self.rng.choice(self.fam[name], size=int(sel.sum()), p=self.famp[name])
        return out

    def _apply_onsets(self, rows: np.ndarray, d: np.ndarray, age: np.ndarray, codes: np.ndarray) -> None:
        s = self.s
        s.has[rows, d] = True
        s.onset_age[rows, d] = age
        s.spec[rows, d] = codes
        ckd = d == P.IDX["ckd"]
        s.ckd_stage[rows[ckd]] = np.where(self.rng.random(int(ckd.sum())) < 0.6, 3, 2)

    def _progress_ckd(self, ix: np.ndarray) -> None:
        s = self.s
        rows = ix[s.ckd_stage[ix] > 0]
        rate = 0.07 * np.exp(0.5 * s.has[rows, P.IDX["diabetes_t2"]] + 0.3 * s.has[rows, P.IDX["hypertension"]]
                             + 0.3 * s.z_cardio[rows])
        up = self.rng.random(rows.size) < -np.expm1(-rate)
        s.ckd_stage[rows[up]] = np.minimum(s.ckd_stage[rows[up]] + 1, 5)

    def disease_code(self, rows: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The code a visit records for disease d: the patient's own, a stage code for CKD, or a rare variant."""
        s = self.s
        code = s.spec[rows, d].copy()
        ckd = d == P.IDX["ckd"]
        code[ckd] = self.ckd_table[s.ckd_stage[rows[ckd]], s.ckd_sub[rows[ckd]]]
        variant = self.rng.random(d.size) < 0.12
        if variant.any():
            code[variant] = self.zipf_codes(d[variant])
        return code

    def chronic_codes(self, rows: np.ndarray, t: np.ndarray, p: float, kind: int) -> None:
        mask = self.s.has[rows] & (self.rng.random((rows.size, P.D)) < p)
        r, d = np.nonzero(mask)
        self.ev.add(rows[r], t[r], self.disease_code(rows[r], d), kind=kind)

    def labs(self, loinc: str, rows: np.ndarray, t: np.ndarray, age: np.ndarray, kind: int,
             ctx: LabContext | None = None) -> np.ndarray:
        v = lab_values(loinc, self.s, rows, age, self.rng, ctx)
        self.ev.add(rows, t, self.cb.lab(loinc), v, kind=kind, prio=2)
        return v

    def year_observed(self, ix: np.ndarray, k: int) -> None:
        s, rng = self.s, self.rng
        n = ix.size
        a = s.anchor0[ix] + k * P.YEAR
        age = k + s.phase[ix] / P.YEAR
        h = self.hazards(ix, age)
        adm_rate = self.admission_rate(ix, age)
        m_cost = self.expected_cost(ix, age, adm_rate)
        quarter_w = np.full((n, 4), 0.2)
        first_years = k < s.k0[ix] + 2
        self.checkup(ix, a, age, h, m_cost, quarter_w, first_years)
        new_rows, new_d, new_age, new_codes = self.onsets(ix, a, age, h)
        self.outpatient(ix, a, age, quarter_w)
        self.emergency(ix, a, age, quarter_w)
        last_end = self.admissions(ix, a, age, adm_rate, quarter_w)
        self.claims(ix, a, m_cost, quarter_w)
        self.out_of_hospital_death(ix, a, age, last_end)
        self._apply_onsets(new_rows, new_d, new_age, new_codes)
        self._progress_ckd(ix)

    # ----- yearly check-up ----------------------------------------------------------------------
    def checkup(self, ix, a, age, h, m_cost, quarter_w, first_years) -> None:
        s, rng, cb = self.s, self.rng, self.cb
        go = rng.random(ix.size) < sigmoid(0.2 + 0.9 * s.engage[ix] + 0.02 * (age - 40))
        sel = np.nonzero(go)[0]
        rows, t, ag = ix[sel], a[sel], age[sel]
        quarter_w[sel, 0] += 1.5
        # ground truth: new diagnoses within a year and next-year cost, known at the check-up
        for name in EXPORTED_ONSETS:
            j = P.IDX[name]
            at_risk = ~s.has[rows, j]
            self.gt.add(rows[at_risk], t[at_risk], OUT_ONSET[name], -np.expm1(-h[sel, j][at_risk]), ambulatory=True)
        self.gt.add(rows, t, OUT_COST, m_cost[sel], ambulatory=True)

        adult = ag >= 18
        self.ev.add(rows, t, self.c["ENCOUNTER//WELLNESS"], kind=AMBULATORY, prio=0)
        self.ev.add(rows[adult], t[adult], cb.cpt("99396"), kind=AMBULATORY)
        multimorbid = s.has[rows].any(axis=1)
        z00 = np.where(adult, np.where(multimorbid, cb.icd("Z00.01"), cb.icd("Z00.00")),
                       np.where(rng.random(rows.size) < 0.8, cb.icd("Z00.129"), cb.icd("Z00.121")))
        self.ev.add(rows, t, z00, kind=AMBULATORY)
        self.chronic_codes(rows, t, 0.7, AMBULATORY)
        smoking = s.smoking_now(rows, ag)
        former = (ag >= s.smoke_stop[rows])
        pick = (smoking & (rng.random(rows.size) < 0.6))
        self.ev.add(rows[pick], t[pick], cb.icd("F17.210"), kind=AMBULATORY)
        pick = (former & (rng.random(rows.size) < 0.4))
        self.ev.add(rows[pick], t[pick], cb.icd("Z87.891"), kind=AMBULATORY)
        fy = first_years[go]
        pick = fy & s.fh_cad[rows] & (rng.random(rows.size) < 0.5)
        self.ev.add(rows[pick], t[pick], cb.icd("Z82.49"), kind=AMBULATORY)
        pick = fy & s.fh_dm[rows] & (rng.random(rows.size) < 0.5)
        self.ev.add(rows[pick], t[pick], cb.icd("Z83.3"), kind=AMBULATORY)
        pick = rng.random(rows.size) < 0.04  # rare social/history codes; the meaningful head codes are above
        tail = self.cb.family_ids["risk_markers"][len(FAMILY_HEAD["risk_markers"]):]
        self.ev.add(rows[pick], t[pick], rng.choice(tail, int(pick.sum())), kind=AMBULATORY)
        # vitals and labs
        for loinc in ("8480-6", "8462-4", "39156-5"):
            self.labs(loinc, rows[adult], t[adult], ag[adult], AMBULATORY)
        has = lambda name: s.has[rows, P.IDX[name]]  # noqa: E731
        u = rng.random((rows.size, 6))
        lipid = adult & (has("hyperlipidemia") | has("cad") | (u[:, 0] < 0.45) & (ag > 30))
        for loinc in ("13457-7", "2085-9", "2571-8"):
            self.labs(loinc, rows[lipid], t[lipid], ag[lipid], AMBULATORY)
        a1c_sel = adult & (has("diabetes_t2") | (u[:, 1] < 0.25))
        a1c = self.labs("4548-4", rows[a1c_sel], t[a1c_sel], ag[a1c_sel], AMBULATORY)
        renal = adult & (has("ckd") | has("diabetes_t2") | has("hypertension") | (u[:, 2] < 0.4))
        for loinc in ("2160-0", "33914-3", "2823-3", "2951-2"):
            self.labs(loinc, rows[renal], t[renal], ag[renal], AMBULATORY)
        sel_bnp = has("heart_failure") & (u[:, 3] < 0.7)
        self.labs("30934-4", rows[sel_bnp], t[sel_bnp], ag[sel_bnp], AMBULATORY)
        sel_tsh = has("hypothyroidism") | (adult & (u[:, 4] < 0.08))
        self.labs("3016-3", rows[sel_tsh], t[sel_tsh], ag[sel_tsh], AMBULATORY)
        sel_hb = adult & (u[:, 5] < 0.3)
        self.labs("718-7", rows[sel_hb], t[sel_hb], ag[sel_hb], AMBULATORY)
        any_lab = lipid | a1c_sel | renal | sel_tsh | sel_hb
        self.ev.add(rows[any_lab], t[any_lab], cb.cpt("36415"), kind=AMBULATORY)
        # prescriptions renewed at the visit
        r, m = np.nonzero(s.on[rows] & (rng.random((rows.size, len(MED_LIST))) < 0.85))
        self.ev.add(rows[r], t[r] + 10, self.med_code[m], kind=AMBULATORY, prio=3)
        # vaccines and screening
        flu = rng.random(rows.size) < 0.35
        self.ev.add(rows[flu], t[flu], cb.icd("Z23"), kind=AMBULATORY)
        self.ev.add(rows[flu], t[flu], cb.cpt("90686"), kind=AMBULATORY)
        mammo = ~s.male[rows] & (ag >= 50) & (ag < 75) & (rng.random(rows.size) < 0.4)
        self.ev.add(rows[mammo], t[mammo] + 7 * DAY, cb.cpt("77067"), kind=AMBULATORY)
        colo = (ag >= 50) & (ag < 76) & (rng.random(rows.size) < 0.07)
        self.ev.add(rows[colo], t[colo] + 30 * DAY, cb.cpt("45378"), kind=AMBULATORY)
        self.escalate(rows, t, a1c_sel, a1c)

    def escalate(self, rows, t, a1c_sel, a1c) -> None:
        """Second-line treatment after the check-up when control is poor (history-dependent patterns)."""
        s, rng = self.s, self.rng
        r = rows[a1c_sel]
        dm = s.has[r, P.IDX["diabetes_t2"]]
        second = s.on[r, s.M_IDX["A10BK01"]] | s.on[r, s.M_IDX["A10BJ06"]]
        start2 = dm & ~second & (a1c > 8.0) & (rng.random(r.size) < 0.5)
        drug = np.where(rng.random(r.size) < 0.5, s.M_IDX["A10BK01"], s.M_IDX["A10BJ06"])
        self._start(r[start2], t[a1c_sel][start2] + DAY, drug[start2], AMBULATORY)
        insulin = dm & second & ~s.on[r, s.M_IDX["A10AE04"]] & (a1c > 9.0) & (rng.random(r.size) < 0.4)
        self._start(r[insulin], t[a1c_sel][insulin] + DAY, s.M_IDX["A10AE04"], AMBULATORY)
        htn = s.has[rows, P.IDX["hypertension"]] & ~s.on[rows, s.M_IDX["C08CA01"]] & (rng.random(rows.size) < 0.08)
        self._start(rows[htn], t[htn] + DAY, s.M_IDX["C08CA01"], AMBULATORY)

    def _start(self, rows, t, med_idx, kind) -> None:
        med_idx = np.broadcast_to(med_idx, rows.shape)
        self.ev.add(rows, t, self.med_code[med_idx], kind=kind, prio=3)
        self.s.on[rows, med_idx] = True

    # ----- new chronic diagnoses -------------------------------------------------------------------
    def onsets(self, ix, a, age, h):
        s, rng = self.s, self.rng
        p = -np.expm1(-h)
        new = (rng.random(h.shape) < p) & ~s.has[ix]
        r, d = np.nonzero(new)
        rows = ix[r]
        # onset time: constant hazard within the year, truncated to (a + 1 day, a + YEAR)
        u = rng.random(r.size)
        hh = h[r, d]
        frac = -np.log1p(-u * -np.expm1(-hh)) / hh
        t = np.round(a[r] + DAY + frac * (P.YEAR - 2 * DAY))
        ag = age[r] + (t - a[r]) / P.YEAR
        codes = self.zipf_codes(d)
        self.ev.add(rows, t, self.c["ENCOUNTER//OUTPATIENT"], kind=AMBULATORY, prio=0)
        self.ev.add(rows, t, self.cb.cpt("99214"), kind=AMBULATORY)
        self.ev.add(rows, t, codes, kind=KEEP)
        # first-line treatment: the 'simple' outcome, decided from the diagnosis visit alone
        logit = np.array([P.DISEASES[j].treat_logit for j in d], dtype=np.float64).reshape(-1)
        rank_gt0 = codes != np.array([self.fam[P.DISEASES[j].name][0] for j in d], dtype=np.int32).reshape(-1)
        logit = logit + 0.8 * rank_gt0 - 0.7 * (ag > 75)
        for j in np.unique(d):
            dis = P.DISEASES[j]
            if dis.onset_lab is None:
                continue
            sel = d == j
            s.has[rows[sel], j] = True  # the diagnosis visit's lab already shows the new disease
            v = self.labs(dis.onset_lab, rows[sel], t[sel], ag[sel], AMBULATORY)
            s.has[rows[sel], j] = False
            logit[sel] += 1.3 * prescribing_signal(dis.onset_lab, v, dis.lab_center, dis.lab_scale)
        fl = self.first_line[d]
        treatable = fl >= 0
        p_med = sigmoid(logit)
        exported = treatable & (t + 30 * DAY <= s.followup_end[rows])
        self.gt.add(rows[exported], t[exported], OUT_MED_START, p_med[exported],
                    target=self.med_code[fl[exported]])
        start = exported & (rng.random(r.size) < p_med)
        delay = rng.integers(DAY, 30 * DAY, r.size)
        self._start(rows[start], t[start] + delay[start], fl[start], KEEP)
        return rows, d, ag, codes

    # ----- ambulatory care ---------------------------------------------------------------------------
    def outpatient(self, ix, a, age, quarter_w) -> None:
        s, rng, cb = self.s, self.rng, self.cb
        lam = 0.7 * np.exp(0.4 * s.engage[ix] + 0.18 * s.has[ix].sum(axis=1) + 0.2 * s.z_frail[ix])
        count = np.minimum(rng.poisson(lam), 8)
        v = np.repeat(np.arange(ix.size), count)
        rows = ix[v]
        t = np.round(a[v] + rng.uniform(DAY, P.YEAR - DAY, v.size))
        ag = age[v] + (t - a[v]) / P.YEAR
        np.add.at(quarter_w, (v, np.minimum(((t - a[v]) * 4 // P.YEAR).astype(np.int64), 3)), 1.0)
        self.ev.add(rows, t, cb.ids(["ENCOUNTER//OUTPATIENT"])[0], kind=AMBULATORY, prio=0)
        self.ev.add(rows, t, np.where(rng.random(v.size) < 0.6, cb.cpt("99213"), cb.cpt("99214")), kind=AMBULATORY)
        acute = rng.random(v.size) < np.where(s.has[rows].any(axis=1), 0.45, 0.85)
        self.ev.add(rows[acute], t[acute], self.mixture(P.OUTPATIENT_ACUTE, int(acute.sum())), kind=AMBULATORY)
        self.chronic_codes(rows, t, 0.35, AMBULATORY)
        u = rng.random((v.size, 4))
        has = lambda name: s.has[rows, P.IDX[name]]  # noqa: E731
        sel = has("diabetes_t2") & (u[:, 0] < 0.3)
        self.labs("4548-4", rows[sel], t[sel], ag[sel], AMBULATORY)
        sel = (has("ckd") | has("heart_failure")) & (u[:, 1] < 0.3)
        self.labs("2160-0", rows[sel], t[sel], ag[sel], AMBULATORY)
        sel = (ag >= 18) & (u[:, 2] < 0.5)
        self.labs("8480-6", rows[sel], t[sel], ag[sel], AMBULATORY)
        for name, cpt, p in (("copd", "94010", 0.15), ("asthma", "94010", 0.1), ("osteoarthritis", "20610", 0.1),
                             ("osteoarthritis", "97110", 0.15), ("depression", "90837", 0.3),
                             ("diabetes_t2", "92014", 0.08), ("atrial_fibrillation", "93000", 0.3),
                             ("heart_failure", "93306", 0.1), ("cad", "93000", 0.2)):
            sel = has(name) & (rng.random(v.size) < p)
            self.ev.add(rows[sel], t[sel], cb.cpt(cpt), kind=AMBULATORY)
        sel = acute & (u[:, 3] < 0.25)
        self.ev.add(rows[sel], t[sel] + 5, np.where(rng.random(int(sel.sum())) < 0.7, cb.med("J01CR02"),
                                                     cb.med("N02BE01")), kind=AMBULATORY, prio=3)

    def emergency(self, ix, a, age, quarter_w) -> None:
        s, rng, cb = self.s, self.rng, self.cb
        lam = 0.1 * np.exp(0.5 * s.z_frail[ix] + 0.12 * s.has[ix].sum(axis=1) - 0.2 * s.engage[ix])
        count = np.minimum(rng.poisson(lam), 5)
        v = np.repeat(np.arange(ix.size), count)
        rows = ix[v]
        t = np.round(a[v] + rng.uniform(DAY, P.YEAR - DAY, v.size))
        ag = age[v] + (t - a[v]) / P.YEAR
        np.add.at(quarter_w, (v, np.minimum(((t - a[v]) * 4 // P.YEAR).astype(np.int64), 3)), 3.0)
        self.ev.add(rows, t, self.c["ENCOUNTER//ED"], kind=AMBULATORY, prio=0)
        self.ev.add(rows, t, cb.cpt("99285"), kind=AMBULATORY)
        self.ev.add(rows, t, self.mixture(P.ED_ACUTE, v.size), kind=AMBULATORY)
        self.chronic_codes(rows, t, 0.2, AMBULATORY)
        sel = rng.random(v.size) < 0.45
        for loinc in ("6690-2", "718-7", "2160-0", "10839-9"):
            self.labs(loinc, rows[sel], t[sel] + 20, ag[sel], AMBULATORY)
        for cpt, p in (("71046", 0.25), ("70450", 0.1), ("74177", 0.1), ("93000", 0.3)):
            pick = rng.random(v.size) < p
            self.ev.add(rows[pick], t[pick] + 40, cb.cpt(cpt), kind=AMBULATORY)

    # ----- hospital admissions -------------------------------------------------------------------
    def admissions(self, ix, a, age, adm_rate, quarter_w) -> np.ndarray:
        s, rng = self.s, self.rng
        n = ix.size
        n_bg = np.minimum(rng.poisson(adm_rate), 3)
        cand = np.where(np.arange(3) < n_bg[:, None], a[:, None] + rng.uniform(0, P.YEAR, (n, 3)), np.inf)
        cand = np.sort(np.round(cand), axis=1)
        ptr = np.zeros(n, dtype=np.int64)
        last_end = np.full(n, -np.inf)
        year_end = a + P.YEAR
        for _ in range(8):
            c = np.where(ptr < 3, cand[np.arange(n), np.minimum(ptr, 2)], np.inf)
            c = np.maximum(c, s.blocked_until[ix])
            c[c >= year_end] = np.inf
            pend = s.pending[ix]
            use_p = np.isfinite(pend)
            t = np.where(use_p, pend, c)
            go = np.isfinite(t) & s.alive[ix] & (t < s.followup_end[ix])
            if not go.any():
                break
            ptr[go & ~use_p] += 1
            sel = np.nonzero(go)[0]
            end = self.admit(ix[sel], t[sel], age[sel] + (t[sel] - a[sel]) / P.YEAR, use_p[sel])
            last_end[sel] = end
            q = np.clip(((t[sel] - a[sel]) * 4 // P.YEAR).astype(np.int64), 0, 3)
            np.add.at(quarter_w, (sel, q), 20.0 + 2.0 * (end - t[sel]) / DAY)
        return last_end

    def admit(self, rows, t, ag, is_readmission) -> np.ndarray:
        """One admission per row at time t: draw its reason, course and outcome; returns the stay's end."""
        s, rng, cb = self.s, self.rng, self.cb
        n = rows.size
        has = s.has[rows].astype(np.float64)
        logw = REASON_BASE + has @ REASON_BOOST.T
        req_ok = np.where(REASON_REQUIRES >= 0, s.has[rows][:, np.maximum(REASON_REQUIRES, 0)], True)
        w = np.where(req_ok, np.exp(logw), 0.0)
        cum = np.cumsum(w, axis=1)
        reason = (cum < rng.random(n)[:, None] * cum[:, -1:]).sum(axis=1)
        same = is_readmission & (rng.random(n) < 0.5)
        reason = np.where(same, s.pending_reason[rows], reason)
        s.pending[rows] = np.where(is_readmission, np.inf, s.pending[rows])

        n_major = s.n_major(rows)
        frail = s.z_frail[rows]
        p_death = sigmoid(REASON_DEATH[reason] - 1.5 + 0.045 * (ag - 70) + 0.6 * frail + 0.25 * n_major
                          + 0.5 * (s.ckd_stage[rows] >= 4))
        p_long = sigmoid(REASON_LONG[reason] + 0.02 * (ag - 70) + 0.4 * frail + 0.2 * n_major)
        fatal = rng.random(n) < p_death
        long = rng.random(n) < p_long
        long_los = 7 * DAY + 1 + np.minimum(np.floor(rng.exponential(6 * DAY, n)), 53 * DAY - 1)
        short_los = np.round(DAY * (0.25 + 6.75 * rng.beta(1.5, 3.0, n)))
        end = t + np.where(long, long_los, short_los)
        exported = t + 60 * DAY <= s.followup_end[rows]
        self.gt.add(rows[exported], t[exported], OUT_IN_HOSPITAL_DEATH, p_death[exported])
        self.gt.add(rows[exported], t[exported], OUT_LONG_STAY, p_long[exported])
        for key, val in (("row", rows), ("start", t), ("end", end)):
            self.stays[key].append(val)

        # what the admission records
        self.ev.add(rows, t, self.c["ADMISSION//INPATIENT"], prio=0)
        rcode = self.reason_code[reason].copy()
        own = rcode < 0
        own_d = REASON_REQUIRES[reason[own]]
        rcode[own] = s.spec[rows[own], own_d]
        self.ev.add(rows, t, rcode)
        self.ev.add(rows, t, cb.cpt("99223"))
        self.chronic_codes(rows, t, 0.8, NORMAL)
        flags = {r.name: reason == i for i, r in enumerate(P.REASONS)}
        ctx = LabContext(n, aki=flags["acute_kidney_injury"], hf_exacerbation=flags["hf_exacerbation"],
                         gi_bleed=flags["gi_bleed"], hyponatremia=flags["hyponatremia"],
                         infection=np.isin(reason, [i for i, r in enumerate(P.REASONS) if r.infection]),
                         myocardial_infarction=flags["myocardial_infarction"], sepsis=flags["sepsis"])
        for loinc in ("2160-0", "718-7", "2951-2", "2823-3"):
            self.labs(loinc, rows, t + 30, ag, NORMAL, ctx)
        for i, r in enumerate(P.REASONS):
            sel = np.nonzero(reason == i)[0]
            if sel.size == 0:
                continue
            sub = LabContext(sel.size, **{k: v[sel] for k, v in ctx.flags.items()})
            for loinc in r.labs:
                v = lab_values(loinc, s, rows[sel], ag[sel], rng, sub)
                self.ev.add(rows[sel], t[sel] + 30, cb.lab(loinc), v, prio=2)
            for cpt, p in r.procedures:
                pick = sel[rng.random(sel.size) < p]
                self.ev.add(rows[pick], t[pick] + 120, cb.cpt(cpt))
            for atc in r.drugs:
                self.ev.add(rows[sel], t[sel] + 60, cb.med(atc), prio=3)

        # death in hospital, or discharge and the 30-day readmission draw
        died = rows[fatal]
        self.ev.add(died, end[fatal], self.c["MEDS_DEATH"], prio=9)
        s.alive[died] = False
        s.death[died] = end[fatal]
        ok = ~fatal
        rows_ok, end_ok, reason_ok = rows[ok], end[ok], reason[ok]
        snf = rng.random(rows_ok.size) < sigmoid(-2.2 + 0.05 * (ag[ok] - 70) + 0.5 * frail[ok] + 1.0 * long[ok])
        self.ev.add(rows_ok, end_ok, np.where(snf, self.c["DISCHARGE//SNF"], self.c["DISCHARGE//HOME"]), prio=0)
        self.labs("2160-0", rows_ok, end_ok - 60, ag[ok], NORMAL, LabContext(rows_ok.size))
        for reason_name, atcs in (("hf_exacerbation", ("C03CA01",)), ("myocardial_infarction", ("C07AB02", "C10AA01"))):
            sel = reason_ok == P.RIDX[reason_name]
            for atc in atcs:
                self._start(rows_ok[sel], end_ok[sel], s.M_IDX[atc], NORMAL)
        p_readmit = sigmoid(REASON_READMIT[reason_ok] - 0.9 + 0.3 * n_major[ok] + 0.5 * frail[ok] + 0.5 * long[ok]
                            + 0.4 * snf)
        can = end_ok + 30 * DAY <= s.followup_end[rows_ok]
        self.gt.add(rows_ok[can], end_ok[can], OUT_READMISSION, p_readmit[can])
        readmit = can & (rng.random(rows_ok.size) < p_readmit)
        s.pending[rows_ok[readmit]] = end_ok[readmit] + rng.integers(DAY, 30 * DAY, int(readmit.sum()))
        s.pending_reason[rows_ok] = reason_ok
        s.blocked_until[rows_ok] = end_ok + 31 * DAY
        return end

    # ----- cost and death ------------------------------------------------------------------------
    def claims(self, ix, a, m_cost, quarter_w) -> None:
        """The year's cost, Gamma with mean m_cost, paid in claims after the quarters that had care.

        Quarters without care carry only the baseline weight; their share is paid with the last claim
        of the year, so every year has one claim at its last quarter's end and the total is exact.
        """
        total = self.rng.gamma(2.0, m_cost / 2.0)
        share = quarter_w / quarter_w.sum(axis=1, keepdims=True)
        care = quarter_w > 0.2 + 1e-9
        care[:, 3] = True
        carry = np.zeros(ix.size)
        for q in range(4):
            carry = carry + share[:, q]
            pay = care[:, q]
            t = a + (q + 1) * (P.YEAR // 4) - DAY
            self.ev.add(ix[pay], t[pay], self.c["COST//CLAIMS"], np.round(total[pay] * carry[pay], 2), kind=KEEP, prio=8)
            carry[pay] = 0.0

    def out_of_hospital_death(self, ix, a, age, last_end) -> None:
        s, rng = self.s, self.rng
        h = 0.0006 * np.exp(0.085 * (age - 50) + 0.45 * s.z_frail[ix] + s.has[ix] @ DEATH)
        dies = s.alive[ix] & ~np.isfinite(s.pending[ix]) & (rng.random(ix.size) < -np.expm1(-h))
        t = np.round(np.maximum(a + rng.uniform(0, P.YEAR, ix.size), last_end + 60))
        dies &= t < s.followup_end[ix]
        rows = ix[dies]
        self.ev.add(rows, t[dies], self.c["MEDS_DEATH"], prio=9)
        s.alive[rows] = False
        s.death[rows] = t[dies]


def simulate_shard(n: int, seed_seq: np.random.SeedSequence, cb: CodeBook):
    """Simulate `n` patients; returns (events, ground_truth, state) with rows indexing 0..n-1."""
    sim = ShardSimulator(n, seed_seq, cb)
    events, truth = sim.run()
    return events, truth, sim.s
