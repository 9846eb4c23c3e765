"""scaling.runtime.keep_freed_memory: a freed large buffer is reused, not faulted in again."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys
    from medscale.scaling.run.runtime import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 * 2**20  # above glibc's largest mmap threshold, as XLA's scratch buffers are
    def faults_for_one_buffer():  # as XLA does each step: malloc, write every page, free
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults_for_one_buffer()
    print(min(faults_for_one_buffer() for _ in range(3)))
""")


def _env_without_tunables() -> dict[str, str]:
    """This process's environment without GLIBC_TUNABLES (importing the CLI sets them for children)."""
    return {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, env=_env_without_tunables())
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    assert _faults("default") > pages // 2  # glibc maps and faults every page in, every time
    assert _faults("keep") < pages // 20


def test_malloc_env_keeps_other_tunables_and_overrides_ours():
    from medscale.scaling.run.runtime import malloc_env

    env = malloc_env({"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.arena_max=8"})
    items = env["GLIBC_TUNABLES"].split(":")
    assert "glibc.pthread.rseq=0" in items
    assert "glibc.malloc.arena_max=1" in items and "glibc.malloc.arena_max=8" not in items
    assert "glibc.malloc.mmap_max=0" in items


ARENAS_AFTER_CLI_IMPORT = textwrap.dedent("""
    import ctypes, threading
    import medscale.scaling.cli  # imports numpy and scipy, whose BLAS pools start threads
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def work():  # as XLA's threads do once they start
        for _ in range(10):
            libc.free(libc.malloc(1 << 16))
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    libc.malloc_stats()  # one "Arena N:" section per malloc arena, on stderr
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_the_cli_process_keeps_one_malloc_arena_for_every_thread():
    """keep_freed_memory runs before the CLI's imports start any thread: a thread that made an
    arena of its own before it would leave later (XLA) threads sharing a capped arena."""
    out = subprocess.run([sys.executable, "-c", ARENAS_AFTER_CLI_IMPORT], capture_output=True, text=True,
                         check=True, env=_env_without_tunables())
    arenas = [line for line in out.stderr.splitlines() if line.startswith("Arena ")]
    assert arenas == ["Arena 0:"], out.stderr
