"""Flax NNX transformers (decoder-only and encoder-only), model shapes and sharding.

Knows nothing of scaling/. `models.config` is importable without JAX.
"""
