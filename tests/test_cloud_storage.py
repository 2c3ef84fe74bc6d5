"""A gs:// workdir on a real storage server: fake-gcs-server (tests/storage_emulator.py), reached through
STORAGE_EMULATOR_HOST alone, behind a proxy that answers 10% of the requests with a 503, a 429 or a dropped
connection. orbax/tensorstore, gcsfs (epath: metrics.jsonl, the report, the checkpoints' metadata) and
google-cloud-storage (TensorBoard events) all write there, retrying on their own."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, load_recipe, variables_digest
from storage_emulator import FAULTS, StorageEmulator

import jaxnets
from jaxnets.train import reporting, train_and_evaluate

# Few saves (each is ~100 requests, and a fault costs a client's backoff of 1-2 s): at 24 and 48, and at the SIGTERM.
SHORT = {"num_train_steps": 48, "log_every_steps": 8, "eval_every_epochs": 100.0, "checkpoint_every_steps": 24}
FLAGS = ["--config", "configs/quickstart.py", *(f"--config.{k}={v}" for k, v in SHORT.items())]

# In one process, as a notebook would: the report of the gs:// run, then its checkpoint, printed as a digest.
REPORT_AND_LOAD = """
import sys
sys.path.append("tests")
import jaxnets
from helpers import variables_digest
from jaxnets.report import write_report
print(sorted(p.name for p in write_report("gs://bucket/run")))
print(variables_digest(jaxnets.load_checkpoint("gs://bucket/run")[1]))
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    server = StorageEmulator(tmp_path_factory.mktemp("gcs"))
    server.create_bucket("bucket")
    yield server
    server.close()


def committed_steps(emulator, prefix: str) -> list[int]:
    names = emulator.names("bucket", f"{prefix}/checkpoints/")
    return sorted(int(n.split("/")[2]) for n in names if n.endswith("/commit_success.txt") and n.count("/") == 3)


def trained_steps(log_path) -> list[int]:
    """The steps a train.py's progress lines (in its stderr) report."""
    return [int(step) for step in re.findall(r"step (\d+)/\d+ ", log_path.read_text())]


def losses(metrics_jsonl: str) -> dict[int, float]:
    rows = [json.loads(line) for line in metrics_jsonl.splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_the_quickstart_on_gs_through_faults_kills_and_resumes_equals_a_local_run(emulator, tmp_path):
    """train, SIGKILL, resume, SIGTERM, resume to the end, report, load: with 10% of the storage requests failing,
    the losses are the local run's, bit for bit, nothing is moved to checkpoints_broken/, and the checkpoint
    opens with the local run's parameters."""
    emulator.proxy.fault_rate = 0.1
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator.url}

    def launch(name):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115  closed below
        command = [sys.executable, "train.py", *FLAGS, "--workdir", "gs://bucket/run"]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log), log

    def wait_until(condition, process, name, timeout=240.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{name}: timed out"
            time.sleep(0.1)

    process, log = launch("first")
    wait_until(lambda: committed_steps(emulator, "run"), process, "first")
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    killed_at = max(committed_steps(emulator, "run"))

    process, log = launch("second")
    wait_until(lambda: max(trained_steps(tmp_path / "second.log"), default=0) > killed_at, process, "second")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log.close()
    second = (tmp_path / "second.log").read_text()
    assert f"at step {killed_at}" in second and "SIGTERM" in second
    assert second.count("resolved config") == 1 and "\nlearning_rate: 0.1\n" in second, "printed once at start"
    stopped_at = max(committed_steps(emulator, "run"))
    assert re.findall(r"saved step (\d+), stopping", second) == [str(stopped_at)], "the step it stopped at is saved"
    assert killed_at < stopped_at < SHORT["num_train_steps"]

    process, log = launch("third")
    assert process.wait(timeout=300) == 0, (tmp_path / "third.log").read_text()[-3000:]
    log.close()
    assert f"at step {stopped_at}" in (tmp_path / "third.log").read_text()

    # The report and the checkpoint read from gs:// (mostly waiting out the clients' backoffs), while this process
    # trains the same run undisturbed on a local disk: the reference.
    reader = subprocess.Popen([sys.executable, "-c", REPORT_AND_LOAD], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    train_and_evaluate(load_recipe("quickstart", **SHORT), str(tmp_path / "local"))
    expected = losses((tmp_path / "local" / "metrics.jsonl").read_text())
    got = losses(emulator.read("bucket", "run/metrics.jsonl").decode())
    assert sorted(got) == list(range(8, 49, 8)) and got == expected, (killed_at, stopped_at)
    names = emulator.names("bucket", "run/")
    assert not [n for n in names if "checkpoints_broken" in n]
    assert [n for n in names if "events.out.tfevents" in n], "TensorBoard wrote its events there"

    stdout, stderr = reader.communicate(timeout=300)
    assert reader.returncode == 0, stderr[-3000:]
    report, on_gcs = stdout.splitlines()[-2:]
    assert report == str(["confusion_matrix.png", "curves.png", "predictions.png"])
    assert on_gcs == variables_digest(jaxnets.load_checkpoint(tmp_path / "local")[1]), "the local run's parameters"
    assert {"run/curves.png", "run/predictions.png"} <= set(emulator.names("bucket", "run/"))
    assert all(emulator.proxy.faults[kind] >= 5 for kind in FAULTS), emulator.proxy.faults
    print(f"{emulator.proxy.requests} storage requests, faults injected: {dict(emulator.proxy.faults)}; "
          f"SIGKILL after step {killed_at}, SIGTERM at step {stopped_at}")


def test_a_failed_first_upload_of_tensorboard_events_is_retried(emulator, monkeypatch):
    """tensorboardX sends an event file's first upload without a precondition, which google-cloud-storage does not
    retry; jaxnets makes it conditional ("only if absent"), so a 503 there is retried like the later ones."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    monkeypatch.setattr(emulator.proxy, "fault_rate", 0.0)
    emulator.proxy.planned.append(("POST /upload/", "503"))  # the first upload of the event file
    writer = reporting._summary_writer()("gs://bucket/tensorboard", flush_secs=30)
    writer.add_scalar("train/loss", 1.5, 1)
    writer.close()
    assert not emulator.proxy.planned, "the planned 503 was served"
    (name,) = [n for n in emulator.names("bucket", "tensorboard/") if "events.out.tfevents" in n]
    assert b"train/loss" in emulator.read("bucket", name)


# A job of several processes with a gs:// workdir keeps its compiled programs there (jaxnets.train.compilation_cache).
COMPILE_WITH_THE_CACHE_IN_A_BUCKET = """
import jax, jax.numpy as jnp
from jaxnets.train.compilation_cache import use_compilation_cache
use_compilation_cache(None, shared_workdir="gs://bucket/pod-run")
def doubled_sine(x):
    return 2.0 * jnp.sin(x)
print(float(jax.jit(doubled_sine)(jnp.arange(3.0)).sum()))
"""


def test_a_compilation_cache_in_a_bucket_serves_the_next_process(emulator, monkeypatch):
    """What one process compiles, the next loads from gs:// (as each host of a resumed job does)."""
    monkeypatch.setattr(emulator.proxy, "fault_rate", 0.0)
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator.url, "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # (the suite's own cache, which would come first)
    runs = [subprocess.run([sys.executable, "-c", COMPILE_WITH_THE_CACHE_IN_A_BUCKET], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0 and run.stdout == runs[0].stdout, run.stderr[-3000:]
    assert "MISS for 'jit_doubled_sine'" in runs[0].stderr, runs[0].stderr[-3000:]
    assert "cache hit for 'jit_doubled_sine'" in runs[1].stderr, runs[1].stderr[-3000:]
    assert [n for n in emulator.names("bucket", "pod-run/compilation_cache/") if "jit_doubled_sine" in n]
