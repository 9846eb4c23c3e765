"""medscale: scaling-law research for medical event foundation models.

The design card's folders are this package's rooms:

    medscale.data      MEDS I/O, the tokenizer, loaders, task labels; the simulator in medscale.data.simulator
    medscale.models    Flax NNX transformers, shapes and the parameter-count convention, sharding
    medscale.analysis  fits, compute-optimal allocation, saturation, plots, reports (numpy/scipy/pandas only)
    medscale.scaling   sweep specs, FLOPs, training runs, the run store, Ray scheduling, pipelines, the CLI
    medscale.atomic    atomic file writes, shared by every room
"""
__version__ = "0.1.0"
