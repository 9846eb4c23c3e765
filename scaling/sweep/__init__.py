"""A sweep of runs: the YAML spec and its expansion (spec), WSD trunks and branches (wsd), the idempotent step
folder (step_dir), the run store (store) and its format and migrations (store_format), prepared datasets
(dataset), the results table (results), Ray scheduling (scheduler), gangs (gang) and adaptive sweeps (adaptive)."""
