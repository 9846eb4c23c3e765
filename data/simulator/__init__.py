"""The synthetic cohort simulator: seeded MEDS cohorts with known ground-truth outcome probabilities.

    from medscale.data.simulator import generate_cohort
    generate_cohort("cohort/", n_subjects=1000, seed=0)
"""
from medscale.data.simulator.generate import generate_cohort

__all__ = ["generate_cohort"]
