"""Keep OpenBLAS single-threaded while thousands of tiny L-BFGS-B solves run.

scipy's L-BFGS-B makes BLAS/LAPACK calls on 5x5-sized arrays every iteration. With OpenBLAS's default thread
pool those calls wake worker threads that spin on the other cores; on a loaded 2-core machine that made the
bootstrap 10-40x slower. There is no numpy/scipy API for the thread count, so this finds the OpenBLAS copies
loaded in the process (numpy and scipy each bundle one) and calls their own setter, the way threadpoolctl
does. Anywhere that fails (another BLAS, another OS) it does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import os
from contextlib import contextmanager

_SUFFIXES = ("64_", "", "_64_", "_")
_PREFIXES = ("scipy_openblas", "openblas")


@functools.cache
def _controls() -> tuple:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in os.path.basename(line.split()[-1]).lower()}
    except OSError:
        return ()
    found = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre in _PREFIXES:
            for suf in _SUFFIXES:
                get = getattr(lib, f"{pre}_get_num_threads{suf}", None)
                put = getattr(lib, f"{pre}_set_num_threads{suf}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    found.append((get, put))
                    break
            else:
                continue
            break
    return tuple(found)


@contextmanager
def single_threaded_blas():
    controls = _controls()
    before = [get() for get, _ in controls]
    for _, put in controls:
        put(1)
    try:
        yield
    finally:
        for (_, put), n in zip(controls, before):
            put(n)
