"""train.py keeps JAX's persistent compilation cache on: where it lives, and how to move it or turn it off."""

import subprocess
import sys

import pytest
from helpers import REPO

from jaxnets.train.compilation_cache import cache_directory


@pytest.mark.parametrize(
    "flag, environ, expected",
    [
        (None, {"HOME": "/home/u"}, "/home/u/.cache/jaxnets/compilation-cache"),
        (None, {"HOME": "/home/u", "XDG_CACHE_HOME": "/xdg"}, "/xdg/jaxnets/compilation-cache"),
        (None, {"XDG_CACHE_HOME": "/xdg", "JAX_COMPILATION_CACHE_DIR": "/jax"}, "/jax"),  # JAX's own variable
        ("/mine", {"JAX_COMPILATION_CACHE_DIR": "/jax"}, "/mine"),  # the flag, above everything
        ("off", {"JAX_COMPILATION_CACHE_DIR": "/jax"}, None),
    ],
)
def test_the_flag_then_jax_then_the_user_cache(flag, environ, expected, monkeypatch):
    monkeypatch.setenv("HOME", environ.get("HOME", "/home/u"))  # (os.path.expanduser reads the real environment)
    assert cache_directory(flag, environ) == expected


def test_a_relative_flag_is_made_absolute_and_a_url_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cache_directory("cache", {}) == str(tmp_path / "cache")
    assert cache_directory("gs://bucket/cache", {}) == "gs://bucket/cache"


@pytest.mark.parametrize(
    "flag, environ, expected",
    [
        (None, {"XDG_CACHE_HOME": "/xdg"}, "gs://bucket/run/compilation_cache"),  # one that every host reads
        (None, {"JAX_COMPILATION_CACHE_DIR": "/jax"}, "/jax"),  # the user's choice, as on one host
        ("gs://bucket/cache", {"JAX_COMPILATION_CACHE_DIR": "/jax"}, "gs://bucket/cache"),
        ("off", {}, None),
    ],
)
def test_several_processes_share_a_cache_in_the_workdir(flag, environ, expected):
    """On several hosts JAX writes from process 0 only: a cache of each host's own would serve process 0 alone."""
    assert cache_directory(flag, environ, shared_workdir="gs://bucket/run") == expected


def test_a_relative_workdir_gives_an_absolute_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cache_directory(None, {}, shared_workdir="runs/a") == str(tmp_path / "runs" / "a" / "compilation_cache")


APPLY = """
import sys
import jax
from jaxnets.train.compilation_cache import use_compilation_cache
print(use_compilation_cache(None if sys.argv[1] == "-" else sys.argv[1]))
print(jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
print(jax.config.jax_persistent_cache_enable_xla_caches)
"""


@pytest.mark.parametrize("flag", ["-", "off", "gs://bucket/cache"])
def test_train_py_turns_it_on_by_default_and_off_on_request(flag, tmp_path):
    """What JAX itself is then told, in a process without $JAX_COMPILATION_CACHE_DIR (which the suite sets). In a
    bucket, without the GPU autotuner's cache, which JAX would put there for XLA's file layer (no gs:// in it)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    result = subprocess.run([sys.executable, "-c", APPLY, flag], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    directory, enabled, xla_caches = result.stdout.splitlines()
    if flag == "off":
        assert directory == "None" and enabled.startswith("False")
    elif flag == "-":
        assert directory == str(tmp_path / "xdg" / "jaxnets" / "compilation-cache")
        assert enabled == f"True {directory}" and xla_caches == "xla_gpu_per_fusion_autotune_cache_dir"  # JAX's
    else:
        assert directory == flag and enabled == f"True {flag}" and xla_caches == "none"
