"""XLA:CPU's scratch kept between calls (csrc/scratch_cache.c, preloaded by train.py): a freed block of 32 MiB or
more comes back, pages and all, to the next request of its size; anything else is the C library's."""

import os
import subprocess
import sys

import pytest
from helpers import REPO, cpu_devices_env

import jaxnets.scratch_cache
from train import TRANSPARENT_HUGE_PAGES, restart_environment

LIBRARY = jaxnets.scratch_cache.library()
pytestmark = pytest.mark.skipif(LIBRARY is None, reason="the scratch cache is built on Linux with a C compiler only")


def _huge_pages_always() -> bool:
    """Whether the kernel backs every anonymous mapping with huge pages: fresh blocks then fault in 2 MiB at a time."""
    try:
        with open(TRANSPARENT_HUGE_PAGES) as f:
            return "[always]" in f.read()
    except OSError:
        return False


FRESH_PAGES_ARE_SMALL = not _huge_pages_always()

# Each check in a process of its own, with the library preloaded (or not): ctypes calls the process's
# posix_memalign/free/realloc, i.e. the preloaded ones.
BLOCKS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.realloc.argtypes, libc.realloc.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p
MiB = 2**20

def allocate(size, alignment=64):
    address = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(address), alignment, size) == 0
    return address.value

def mapped(address):
    for line in open("/proc/self/maps"):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= address < end:
            return True
    return False

def faults_writing(address, size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(address, 9, size)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

a = allocate(100 * MiB)
ctypes.memset(a, 7, 100 * MiB)
libc.free(a)
b = allocate(100 * MiB - 12345)  # the same size once rounded to 2 MiB
print("same block", b == a and ctypes.string_at(b, 4) == b"\\x07" * 4)  # its pages kept, not zeroed afresh
print("huge-page aligned", a % (2 * MiB) == 0)
print("faults rewriting it", faults_writing(b, 100 * MiB - 12345))
libc.free(b)
c = allocate(200 * MiB)  # another size: the idle block is unmapped rather than kept beside it
print("idle block unmapped", not mapped(a) or c <= a < c + 200 * MiB)
ctypes.memset(c, 5, 16)
d = libc.realloc(c, 300 * MiB)  # moved into the C library's memory, contents kept
print("realloc kept contents", ctypes.string_at(d, 16) == b"\\x05" * 16)
libc.free(d)
small, aligned = allocate(MiB), allocate(100 * MiB, alignment=4 * MiB)  # the C library's
print("4 MiB alignment kept", aligned % (4 * MiB) == 0)
libc.free(small)
libc.free(aligned)
e = allocate(100 * MiB)
print("after the C library's frees", not mapped(c) or e != c)
libc.free(e)
f = allocate(40 * MiB)  # above glibc's largest mmap threshold (32 MiB): kept too
ctypes.memset(f, 3, 40 * MiB)
libc.free(f)
g = allocate(40 * MiB)
print("40 MiB kept", g == f and ctypes.string_at(g, 4) == b"\\x03" * 4)
print("realloc to 0 frees", libc.realloc(g, 0) is None)  # as glibc: NULL, the block idle again
h = allocate(40 * MiB)
print("after realloc to 0", h == f)
libc.free(h)
address = ctypes.c_void_p()
print("bad alignment", libc.posix_memalign(ctypes.byref(address), 3, 100 * MiB))  # EINVAL (22), as glibc
print("size that wraps", libc.posix_memalign(ctypes.byref(address), 64, 2**64 - 1))  # ENOMEM (12), as glibc
"""


def run(code: str, preload: bool, extra_env: dict | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    env.update(extra_env or {})
    if preload:
        env["LD_PRELOAD"] = LIBRARY
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())


def test_a_freed_large_block_comes_back_with_its_pages_to_the_next_request_of_its_size():
    got = run(BLOCKS, preload=True)
    assert got["same block"] == "True"
    assert got["huge-page aligned"] == "True"
    assert int(got["faults rewriting it"]) < 100  # 25,600 pages of 4 KiB: none faulted in again
    assert got["idle block unmapped"] == "True"
    assert got["realloc kept contents"] == "True"
    assert got["after the C library's frees"] == "True"
    assert got["40 MiB kept"] == "True"
    assert got["4 MiB alignment kept"] == "True"
    assert got["realloc to 0 frees"] == got["after realloc to 0"] == "True"
    assert (got["bad alignment"], got["size that wraps"]) == ("22", "12")


def test_without_it_the_same_block_comes_back_zeroed():
    """The check above can fail: glibc maps a block that large afresh, and the kernel zeroes it."""
    got = run(BLOCKS, preload=False)
    assert got["same block"] == "False"
    if FRESH_PAGES_ARE_SMALL:
        assert int(got["faults rewriting it"]) > 1000


# XLA frees a call's block on one of its threads just after the next call has asked for its own (0.1-3 ms, as
# measured): a request that finds a block of its size live waits for it, at most as long as zeroing the block would
# take (1 GiB: 0.107 s), then maps a second one. The blocks are never touched: mapping them costs nothing.
TWIN = """
import ctypes, threading, time
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
GiB = 2**30

def allocate(size):
    address = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(address), 64, size) == 0
    return address.value

a = allocate(GiB)
threading.Timer(0.005, libc.free, args=(a,)).start()  # the previous call's block, freed just after the next asks
b = allocate(GiB)
print("the freed twin", b == a)
start = time.perf_counter()
c = allocate(GiB)  # b stays live: a second block, after waiting for b in vain
print("seconds before a second block", f"{time.perf_counter() - start:.3f}")
print("a second block", c != b)
"""


def test_a_request_waits_for_the_block_of_its_size_that_is_about_to_be_freed():
    got = run(TWIN, preload=True)
    assert got["the freed twin"] == "True"
    assert got["a second block"] == "True"
    assert 0.1 <= float(got["seconds before a second block"]) < 5


# A jitted program whose scratch is 32 MiB or more, its third call's page faults: XLA:CPU allocates that scratch
# per call with posix_memalign, and the library keeps it between calls.
STEPS = """
import resource, jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MiB
step = jax.jit(lambda x: (jnp.cumsum(jnp.sin(x), axis=0) * jnp.cos(x)).sum()).lower(x).compile()
print("scratch MiB", step.memory_analysis().temp_size_in_bytes // 2**20)
for _ in range(2):
    step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(x).block_until_ready()
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_xla_steps_fault_their_scratch_in_once_with_it_and_every_call_without():
    env = cpu_devices_env(1)
    kept, fresh = run(STEPS, preload=True, extra_env=env), run(STEPS, preload=False, extra_env=env)
    assert int(kept["scratch MiB"]) >= 64
    assert int(kept["faults"]) < 1000, kept
    if FRESH_PAGES_ARE_SMALL:
        assert int(fresh["faults"]) > 16000, fresh  # 64 MiB and more in 4 KiB pages, every call (50,000 measured)


@pytest.mark.parametrize("environ, expected", [
    ({"HOME": "/home/u"}, {"HOME": "/home/u", "LD_PRELOAD": "LIB"}),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, None),  # the caller's allocator, left as it is
    ({"LD_PRELOAD": "LIB"}, None),  # already preloaded (train.py after its restart)
])
def test_preloaded_unless_the_caller_preloads_something(environ, expected):
    assert jaxnets.scratch_cache.preload_environment(environ, "LIB") == expected
    assert jaxnets.scratch_cache.preload_environment(environ, None) is None  # not built here


def test_train_py_restarts_with_it_preloaded():
    environment = restart_environment({"HOME": "/home/u"})
    assert environment is not None and environment["LD_PRELOAD"] == LIBRARY
    assert restart_environment(environment) is None  # after the restart: no second one
    stripped = {k: v for k, v in environment.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    assert restart_environment(stripped) is None  # nor where the loader dropped LD_PRELOAD (setuid, setcap)
