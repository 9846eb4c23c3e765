"""MEDS I/O and validation, the synthetic cohort simulator, tokenizer, token shards, loaders, task labels.

Knows nothing of scaling/ or models/.
"""
