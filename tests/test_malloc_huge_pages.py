"""train.py restarts itself once with glibc's malloc asking for transparent huge pages, where the kernel gives
them on request only (XLA:CPU's per-step scratch then faults in 2 MiB pages: train.py's comment), and with XLA's
scratch kept between steps (tests/test_scratch_cache.py)."""

import os
import subprocess
import sys

import pytest
from helpers import REPO

from train import MALLOC_HUGE_PAGES, malloc_huge_pages_environment, restart_environment

ON_REQUEST = "always [madvise] never\n"


@pytest.fixture
def kernel_setting(tmp_path):
    def write(text):
        (path := tmp_path / "enabled").write_text(text)
        return str(path)

    return write


@pytest.mark.parametrize("tunables, expected", [
    (None, MALLOC_HUGE_PAGES),
    ("glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{MALLOC_HUGE_PAGES}"),  # the caller's kept, first
])
def test_asks_for_huge_pages_where_the_kernel_gives_them_on_request(tunables, expected, kernel_setting):
    environ = {"HOME": "/home/u", **({"GLIBC_TUNABLES": tunables} if tunables else {})}
    assert malloc_huge_pages_environment(environ, kernel_setting(ON_REQUEST), "glibc 2.36") == {
        "HOME": "/home/u", "GLIBC_TUNABLES": expected}


@pytest.mark.parametrize("setting, tunables, libc", [
    ("[always] madvise never\n", None, "glibc 2.36"),  # huge pages already: nothing to ask for
    ("always madvise [never]\n", None, "glibc 2.36"),  # none to be had
    (None, None, "glibc 2.36"),  # no such kernel setting
    (ON_REQUEST, "glibc.malloc.hugetlb=0", "glibc 2.36"),  # the user's choice
    (ON_REQUEST, None, "glibc 2.31"),  # before the tunable
    (ON_REQUEST, None, ""),  # not glibc (musl: no CS_GNU_LIBC_VERSION)
])
def test_leaves_the_environment_alone_where_asking_changes_nothing(setting, tunables, libc, kernel_setting,
                                                                   tmp_path):
    path = kernel_setting(setting) if setting else str(tmp_path / "missing")
    assert malloc_huge_pages_environment({"GLIBC_TUNABLES": tunables} if tunables else {}, path, libc) is None


# train.py run as a user runs it, behind a first line that shows each process's tunables: a bad config, refused
# before anything compiles.
SHOW_AND_RUN = """
import os, runpy, sys
print("GLIBC_TUNABLES", os.environ.get("GLIBC_TUNABLES"), "LD_PRELOAD", os.environ.get("LD_PRELOAD"), flush=True)
sys.argv = ["train.py", "--config", "configs/quickstart.py", "--config.learning_rate=-1", "--workdir", sys.argv[1]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_train_py_restarts_itself_once_with_the_tunable_and_the_scratch_cache(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    result = subprocess.run([sys.executable, "-c", SHOW_AND_RUN, str(tmp_path / "run")], cwd=REPO, env=environ,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "learning_rate" in result.stderr.splitlines()[-1], result.stderr[-2000:]
    restarted = restart_environment(environ)  # what this machine's kernel, glibc and build call for
    shown = ["GLIBC_TUNABLES None LD_PRELOAD None"]
    if restarted:
        shown.append(f"GLIBC_TUNABLES {restarted.get('GLIBC_TUNABLES')} LD_PRELOAD {restarted.get('LD_PRELOAD')}")
    assert result.stdout.splitlines() == shown
    if malloc_huge_pages_environment(environ):
        assert restarted["GLIBC_TUNABLES"] == MALLOC_HUGE_PAGES
