"""The simulator's vocabulary: every code it can emit, with an integer id, description and parents.

Codes inside a family are ranked (a disease's common codes first, the rest in a fixed hashed order)
and drawn with Zipf-like probability 1/(rank+1)^ZIPF_EXPONENT, which gives the long tail of rare
specific codes seen in real EHR data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medscale.data.simulator.vocabulary import (ATC_PREFIX, CPT_PREFIX, EVENT_CODES, ICD_PREFIX, LABS, LOINC_PREFIX, MEDICATIONS,
                             PROCEDURES, icd10cm_families)

ZIPF_EXPONENT = 1.1

# Codes that lead each family's ranking (most frequent first).
FAMILY_HEAD: dict[str, list[str]] = {
    "diabetes_t2": ["E11.9", "E11.65", "E11.22", "E11.40"],
    "hypertension": ["I10", "I11.0", "I12.9", "I13.0"],
    "hyperlipidemia": ["E78.5", "E78.00"],
    "ckd": ["N18.30", "N18.31", "N18.2", "N18.32", "N18.4", "N18.5", "N18.6"],
    "heart_failure": ["I50.9", "I50.22", "I50.32"],
    "copd": ["J44.9", "J44.1"],
    "asthma": ["J45.909"],
    "depression": ["F32.9", "F32.A"],
    "atrial_fibrillation": ["I48.91", "I48.0"],
    "cad": ["I25.10"],
    "osteoarthritis": ["M17.11", "M17.0"],
    "hypothyroidism": ["E03.9"],
    "obesity": ["E66.9", "E66.01"],
    "gerd": ["K21.9"],
    "cancer": ["C34.90", "C50.919", "C18.9", "C61"],
    "risk_markers": ["F17.210", "Z87.891", "Z82.49", "Z83.3", "Z86.73"],
    "respiratory_acute": ["J06.9", "J02.9", "J20.9", "J01.90", "J18.9"],
    "infection": ["N39.0", "A41.9", "L03.90", "K52.9", "H66.90"],
    "symptom": ["R07.9", "R10.9", "R55", "R50.9"],
    "musculoskeletal": ["M54.50"],
    "cardiac_acute": ["I21.4", "I63.9"],
    "renal_gi_acute": ["N17.9", "K92.2", "E87.1"],
    "screening": ["Z00.00", "Z00.01", "Z00.129", "Z00.121", "Z23"],
    "injury": ["S72.001A"],
}


def _hash_rank(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


@dataclass(frozen=True)
class CodeBook:
    codes: list[str]
    descriptions: list[str]
    parents: list[list[str]]
    family_ids: dict[str, np.ndarray]     # family -> code ids in rank order
    family_probs: dict[str, np.ndarray]   # family -> Zipf probabilities over family_ids

    def id(self, code: str) -> int:
        return self._index()[code]

    def ids(self, codes: list[str]) -> np.ndarray:
        index = self._index()
        return np.array([index[c] for c in codes], dtype=np.int32)

    def icd(self, code: str) -> int:
        return self.id(ICD_PREFIX + code)

    def lab(self, loinc: str) -> int:
        return self.id(LOINC_PREFIX + loinc)

    def med(self, atc: str) -> int:
        return self.id(ATC_PREFIX + atc)

    def cpt(self, cpt: str) -> int:
        return self.id(CPT_PREFIX + cpt)

    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {c: i for i, c in enumerate(self.codes)}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def _icd_parent(code: str) -> list[str]:
    category = code.split(".")[0]
    return [ICD_PREFIX + category] if category != code else []


@lru_cache(maxsize=1)
def codebook() -> CodeBook:
    codes, descriptions, parents = [], [], []
    family_ids, family_probs = {}, {}

    def add(code: str, description: str, parent: list[str]) -> int:
        codes.append(code)
        descriptions.append(description)
        parents.append(parent)
        return len(codes) - 1

    for code, description in EVENT_CODES.items():
        add(code, description, [])
    for loinc, (description, unit) in LABS.items():
        add(LOINC_PREFIX + loinc, f"{description} ({unit})", [])
    for atc, description in MEDICATIONS.items():
        add(ATC_PREFIX + atc, description, [ATC_PREFIX + atc[:5]])
    for cpt, description in PROCEDURES.items():
        add(CPT_PREFIX + cpt, description, [])
    seen: set[str] = set()
    for family, members in sorted(icd10cm_families().items()):
        head = [c for c in FAMILY_HEAD.get(family, []) if c in members]
        tail = sorted((c for c in members if c not in head), key=_hash_rank)
        ids = []
        for code in head + tail:
            if code in seen:  # a code listed in two families is emitted under its first family only
                continue
            seen.add(code)
            ids.append(add(ICD_PREFIX + code, members[code], _icd_parent(code)))
        ranks = np.arange(1, len(ids) + 1, dtype=np.float64)
        probs = ranks ** -ZIPF_EXPONENT
        family_ids[family] = np.array(ids, dtype=np.int32)
        family_probs[family] = probs / probs.sum()
    return CodeBook(codes, descriptions, parents, family_ids, family_probs)
