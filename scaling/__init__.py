"""medscale.scaling: sweep specs, FLOP accounting, training runs, Ray scheduling, run store, CLI.

This is the package that ties data/, models/ and analysis/ together.
"""
