"""Scaling-law fits, compute-optimal allocation, saturation, plots and reports.

Needs only numpy, scipy, pandas and matplotlib: no JAX, Flax or Ray, so results can be analysed on a laptop.
"""
