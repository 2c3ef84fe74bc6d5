"""Several train steps per jitted call (config.steps_per_dispatch): the calls end wherever the loop acts, one
program serves every number of steps, and a run trains the same numbers whatever the value, resumed or not.

The runs train on one CPU device (the suite's 8 forced devices run one step per call: see
`jaxnets.train.trainer._steps_per_dispatch`)."""

import json
import logging
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from helpers import load_recipe

from jaxnets import data
from jaxnets.train import build_trainer, train_and_evaluate
from jaxnets.train.loop import Cadence
from jaxnets.train.reporting import Reporter


def test_calls_end_at_every_step_where_the_loop_acts():
    cadence = Cadence(total_steps=25, log_every=10, eval_every=7, save_every=100, learns_every=None)
    # The loop acts after steps 7, 10, 14, 20, 21 and 25.
    assert list(cadence.dispatches(0, steps_per_dispatch=4)) == [4, 3, 3, 4, 4, 2, 1, 4]
    assert list(cadence.dispatches(10, steps_per_dispatch=4)) == [4, 4, 2, 1, 4]  # a resume at step 10
    assert list(cadence.dispatches(0, steps_per_dispatch=1)) == [1] * 25
    learning = Cadence(total_steps=12, log_every=100, eval_every=100, save_every=100, learns_every=5)
    assert list(learning.dispatches(0, steps_per_dispatch=8)) == [5, 5, 2]  # and between epochs


# 13 quickstart steps: logs after 5, 10 and 13, saves after 6, 12 and 13, evaluates at the end.
SHORT = {"num_train_steps": 13, "log_every_steps": 5, "checkpoint_every_steps": 6, "eval_every_epochs": 100.0}


def quickstart(**fields):
    return load_recipe("quickstart", **{**SHORT, **fields})


def train_on_one_device(workdir, steps_per_dispatch: int) -> None:
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    logging.getLogger("jaxnets").addHandler(handler)
    try:
        train_and_evaluate(quickstart(steps_per_dispatch=steps_per_dispatch), str(workdir), devices=jax.devices()[:1])
    finally:
        logging.getLogger("jaxnets").removeHandler(handler)
    assert not [w for w in warnings if "runs as 1" in w.getMessage()], "one device runs the device loop"


def logged(workdir) -> dict[int, dict]:
    """metrics.jsonl's records, merged per step (a step's train and eval records)."""
    records: dict[int, dict] = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records.setdefault(record["step"], {}).update(record)
    return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 13 steps one step per call (no device loop) and up to 4 per call (calls of 4, 1, 1, 4, 2, 1)."""
    workdirs = {k: tmp_path_factory.mktemp(f"steps_per_dispatch_{k}") for k in (1, 4)}
    for k, workdir in workdirs.items():
        train_on_one_device(workdir, k)
    return workdirs


def test_four_steps_per_call_train_the_same_numbers_as_one(runs):
    """The same updates, to round-off: the first log point (step 5) within 1.5e-3. Not bit for bit: the single step
    (no device loop) compiles apart from the loop's body, and XLA emits some of its ops differently there: the
    kernel gradient of a strided grouped convolution under XLA's own convolutions (the decomposed lowering),
    elementwise fusions under the suite's compile flags (conftest.py). The quickstart amplifies that round-off by
    jumps (a gradient component that passes in one program and not in the other): measured 3e-7 relative at step 5
    on a Zen 3 and on an AVX-512 Xeon, 4.4e-4 on that Xeon with ONEDNN_MAX_CPU_ISA=AVX2, and 2.5e-3 by step 10, so
    later log points are not compared; a step skipped or a batch misread changes the loss by 3e-3 or more. The
    gradient norm is not compared: it jumps most (1.5% at step 5 with AVX2). Device loops of any length compile to
    one body: the next test holds those bit for bit."""
    one, four = logged(runs[1]), logged(runs[4])
    assert sorted(one) == sorted(four) == [5, 10, 13]
    for key in ("train_loss", "train_param_norm"):
        np.testing.assert_allclose(four[5][key], one[5][key], rtol=1.5e-3, err_msg=key)


def test_a_run_resumes_under_another_number_of_steps_per_call(runs, tmp_path):
    """Resumed at step 6 of the run of 4 steps per call with 3 per call: its numbers, bit for bit (device loops of
    any length compile to the same body, whatever the lowering)."""
    shutil.copytree(runs[4] / "checkpoints" / "6", tmp_path / "checkpoints" / "6")
    train_on_one_device(tmp_path, 3)
    expected, resumed = logged(runs[4]), logged(tmp_path)
    assert sorted(resumed) == [10, 13]
    for step in (10, 13):
        for key in ("train_loss", "train_grad_norm", "eval_top1"):
            if key in expected[step]:
                assert resumed[step][key] == expected[step][key], (step, key)


def test_one_program_runs_any_number_of_steps_like_single_steps():
    config = quickstart(steps_per_dispatch=4)
    trainer = build_trainer(config, devices=jax.devices()[:1])
    assert trainer.steps_per_dispatch == 4
    stream = data.train_iterator(trainer.config, config.global_batch_size)
    batches = [next(stream) for _ in range(3)]
    single, losses = trainer.init_state(), []
    for batch in batches:
        single, metrics = trainer.train_step(single, trainer.shard(batch))
        losses.append(float(metrics["loss"]))
    state = trainer.init_state()
    state, first = trainer.train_steps(state, trainer.shard_steps(batches[:1]), 1)  # 3 steps in calls of 1 and 2
    state, rest = trainer.train_steps(state, trainer.shard_steps(batches[1:]), 2)
    assert trainer.train_steps._cache_size() == 1, "one program for every number of steps"
    assert int(state.step) == 3 and not np.asarray(rest["loss"])[2:].any(), "rows past n stay zeros"
    np.testing.assert_allclose([*np.asarray(first["loss"])[:1], *np.asarray(rest["loss"])[:2]], losses, rtol=1e-5)
    # Each parameter's change over the 3 steps, against the single steps': to round-off as the quickstart amplifies
    # it (measured 1e-6 of the change's norm natively, 4.7e-3 for one tensor with ONEDNN_MAX_CPU_ISA=AVX2 on an
    # AVX-512 Xeon, whose step-3 gradient norm moved by 3e-4); a step missing or repeated moves it by a third or more.
    start = trainer.init_state().params
    for a, b, c in zip(*(jax.tree.leaves(tree) for tree in (state.params, single.params, start)), strict=True):
        change, expected = np.asarray(a) - np.asarray(c), np.asarray(b) - np.asarray(c)
        assert np.linalg.norm(change - expected) <= 2e-2 * np.linalg.norm(expected) + 1e-9


def test_several_cpu_devices_run_one_step_per_call(caplog):
    with caplog.at_level(logging.WARNING, logger="jaxnets"):
        trainer = build_trainer(quickstart(steps_per_dispatch=4))
    assert jax.device_count() == 8 and trainer.steps_per_dispatch == 1
    assert "config.steps_per_dispatch=4 runs as 1 on 8 CPU devices" in caplog.text


def test_several_steps_per_call_compile_on_eight_devices_without_gathering_the_batch():
    """What accelerators run, compiled only (8 CPU devices run one step per call): the device loop of 4 steps
    under shard_map, each step's batch sharded over the devices, one stop vote per call."""
    from jaxnets.train import parallel
    from jaxnets.train.trainer import STOP_VOTE, agree_on_stopping, run_steps, with_conv_lowering

    trainer = build_trainer(quickstart())
    step = with_conv_lowering(trainer.task.train_step, trainer.config.conv_lowering, trainer.mesh)
    train_steps = parallel.data_parallel_train_steps(agree_on_stopping(run_steps(step, 4)), trainer.mesh)
    stacked = parallel.stacked_batch_sharded(trainer.mesh)
    batches = {"image": jax.ShapeDtypeStruct((4, 64, 8, 8, 1), np.float32, sharding=stacked),
               "label": jax.ShapeDtypeStruct((4, 64), np.int32, sharding=stacked),
               STOP_VOTE: jax.ShapeDtypeStruct((4, 8), np.float32, sharding=stacked)}
    hlo = train_steps.lower(trainer.abstract_state(), batches, 1).compile().as_text()
    assert " while(" in hlo and "all-reduce" in hlo and "all-gather" not in hlo


def test_evaluations_are_left_out_of_the_train_images_per_second(tmp_path, monkeypatch):
    clock = iter([0.0, 10.0, 14.0, 20.0])  # a window of 20 s of which 4 s were evaluating
    monkeypatch.setattr("jaxnets.train.reporting.time.perf_counter", lambda: next(clock))
    reporter = Reporter(tmp_path, total_steps=40, steps_per_epoch=10, global_batch_size=8)
    reporter.progress(10, {"train_loss": 1.0, "train_learning_rate": 0.1})  # t = 0
    with reporter.paused():  # t = 10 ... 14
        pass
    reporter.progress(20, {"train_loss": 1.0, "train_learning_rate": 0.1})  # t = 20
    reporter.close()
    rate = logged(tmp_path)[20]["images_per_second"]
    assert rate == pytest.approx(8 * 10 / 16.0)  # 10 steps of 8 images in 16 s of training


def test_training_on_no_device_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=re.escape("train_and_evaluate(devices=[]): give at least one device")):
        train_and_evaluate(quickstart(), str(tmp_path / "run"), devices=[])
    assert not (tmp_path / "run").exists()
