"""Real clinical code lists the simulator draws from (ICD-10-CM, LOINC, ATC, CPT).

`icd10cm_families.json` holds billable ICD-10-CM codes with their official descriptions, grouped
into the families the simulator uses (a chronic disease, acute infections, injuries, ...). It was
extracted once from the CDC's public-domain ICD-10-CM tabular list (April 2026 release); large
families are a fixed subsample so the vocabulary stays in the low thousands.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ICD_PREFIX = "ICD10CM//"
LOINC_PREFIX = "LOINC//"
ATC_PREFIX = "ATC//"
CPT_PREFIX = "CPT//"


@lru_cache(maxsize=1)
def icd10cm_families() -> dict[str, dict[str, str]]:
    """family name -> {ICD-10-CM code (with dot): description}, codes in sorted order."""
    path = Path(__file__).with_name("icd10cm_families.json")
    return json.loads(path.read_text())


# LOINC code, description, unit
LABS: dict[str, tuple[str, str]] = {
    "4548-4": ("Hemoglobin A1c/Hemoglobin.total in Blood", "%"),
    "2345-7": ("Glucose [Mass/volume] in Serum or Plasma", "mg/dL"),
    "13457-7": ("Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "mg/dL"),
    "2085-9": ("Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL"),
    "2571-8": ("Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL"),
    "2160-0": ("Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
    "33914-3": ("Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by MDRD", "mL/min/1.73m2"),
    "30934-4": ("Natriuretic peptide B [Mass/volume] in Serum or Plasma", "pg/mL"),
    "8480-6": ("Systolic blood pressure", "mm[Hg]"),
    "8462-4": ("Diastolic blood pressure", "mm[Hg]"),
    "39156-5": ("Body mass index (BMI) [Ratio]", "kg/m2"),
    "718-7": ("Hemoglobin [Mass/volume] in Blood", "g/dL"),
    "2823-3": ("Potassium [Moles/volume] in Serum or Plasma", "mmol/L"),
    "2951-2": ("Sodium [Moles/volume] in Serum or Plasma", "mmol/L"),
    "6690-2": ("Leukocytes [#/volume] in Blood by Automated count", "10*3/uL"),
    "10839-9": ("Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL"),
    "3016-3": ("Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L"),
    "2524-7": ("Lactate [Moles/volume] in Serum or Plasma", "mmol/L"),
    "1742-6": ("Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L"),
    "19926-5": ("FEV1/FVC [Volume Fraction] Respiratory system", "%"),
}

# ATC code -> description
MEDICATIONS: dict[str, str] = {
    "A10BA02": "metformin", "A10BK01": "dapagliflozin", "A10BJ06": "semaglutide", "A10AE04": "insulin glargine",
    "C09AA05": "ramipril", "C08CA01": "amlodipine", "C03AA03": "hydrochlorothiazide", "C09CA01": "losartan",
    "C10AA05": "atorvastatin", "C10AA01": "simvastatin", "C07AB07": "bisoprolol", "C03CA01": "furosemide",
    "C09DX04": "valsartan and sacubitril", "B01AF02": "apixaban", "B01AA03": "warfarin", "C07AB02": "metoprolol",
    "R03BB04": "tiotropium bromide", "R03AC02": "salbutamol", "R03BA02": "budesonide", "N06AB06": "sertraline",
    "N06AB10": "escitalopram", "H03AA01": "levothyroxine sodium", "A02BC01": "omeprazole", "B01AC06": "acetylsalicylic acid",
    "M01AE01": "ibuprofen", "N02BE01": "paracetamol", "J01DD04": "ceftriaxone", "J01CR02": "amoxicillin and beta-lactamase inhibitor",
    "J01MA02": "ciprofloxacin", "B01AB05": "enoxaparin", "H02AB06": "prednisolone", "L01BC06": "capecitabine",
    "N02AA01": "morphine",
}

# CPT code -> description
PROCEDURES: dict[str, str] = {
    "99213": "Office/outpatient visit, established patient, low complexity",
    "99214": "Office/outpatient visit, established patient, moderate complexity",
    "99396": "Periodic preventive medicine evaluation, established patient, 40-64 years",
    "99285": "Emergency department visit, high complexity",
    "99223": "Initial hospital inpatient care, high complexity",
    "36415": "Collection of venous blood by venipuncture",
    "93000": "Electrocardiogram, routine, with interpretation and report",
    "71046": "Radiologic examination, chest; 2 views",
    "93306": "Echocardiography, transthoracic, complete",
    "45378": "Colonoscopy, flexible; diagnostic",
    "77067": "Screening mammography, bilateral",
    "90686": "Influenza virus vaccine, quadrivalent, intramuscular",
    "94010": "Spirometry",
    "92014": "Ophthalmological services, comprehensive, established patient",
    "97110": "Therapeutic exercises",
    "20610": "Arthrocentesis, aspiration and/or injection, major joint",
    "90837": "Psychotherapy, 60 minutes",
    "93458": "Catheter placement in coronary artery(s) for coronary angiography with left heart catheterization",
    "92928": "Percutaneous transcatheter placement of intracoronary stent(s)",
    "70450": "Computed tomography, head or brain; without contrast material",
    "74177": "Computed tomography, abdomen and pelvis; with contrast material",
    "27236": "Open treatment of femoral fracture, proximal end, neck; prosthetic replacement",
    "90935": "Hemodialysis procedure with single evaluation",
    "31500": "Intubation, endotracheal, emergency procedure",
    "43239": "Esophagogastroduodenoscopy, flexible, transoral; with biopsy",
    "36556": "Insertion of non-tunneled centrally inserted central venous catheter; age 5 years or older",
}

# Codes with no clinical vocabulary of their own (MEDS reserved codes and encounter markers).
EVENT_CODES: dict[str, str] = {
    "MEDS_BIRTH": "Birth",
    "MEDS_DEATH": "Death",
    "GENDER//F": "Sex: female",
    "GENDER//M": "Sex: male",
    "ENCOUNTER//OUTPATIENT": "Outpatient visit",
    "ENCOUNTER//WELLNESS": "Yearly check-up (preventive visit)",
    "ENCOUNTER//ED": "Emergency department visit",
    "ADMISSION//INPATIENT": "Inpatient hospital admission",
    "DISCHARGE//HOME": "Hospital discharge to home",
    "DISCHARGE//SNF": "Hospital discharge to a skilled nursing facility",
    "COST//CLAIMS": "Claims paid for the quarter (USD)",
}
