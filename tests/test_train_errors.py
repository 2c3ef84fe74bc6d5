"""Each bad input fails before anything compiles, with one line naming the field."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from helpers import compiles_nothing

from jaxnets import errors
from jaxnets.config import base_config
from jaxnets.errors import ConfigError, NonFiniteLossError
from jaxnets.train import distributed, resolve_config, train_and_evaluate

REPO = pathlib.Path(__file__).parents[1]


def config_with(**fields):
    c = base_config()
    c.dataset = "digits"
    c.global_batch_size = 64
    c.eval_batch_size = 64
    for key, value in fields.items():
        if key == "model_overrides":
            with c.unlocked():
                c.model_overrides.update(value)
        else:
            c[key] = value
    return c


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"model": "resnext51"}, r"config.model: unknown model 'resnext51'; known: .*resnext50_32x4d"),
        ({"dataset": "cifar11"}, r"config.dataset: .*'cifar11'.*cifar10"),
        ({"schedule": "cosine_restarts"}, r"config.schedule must be one of .*'sgdr', got 'cosine_restarts'"),
        ({"learning_rate": -0.1}, r"config.learning_rate must be > 0, got -0.1"),
        ({"learning_rate": 0.0}, r"config.learning_rate must be > 0, got 0.0"),
        ({"global_batch_size": 100}, r"config.global_batch_size=100 is not a positive multiple of the 8 devices"),
        (
            {"model_overrides": {"num_class": 3}},
            r"config.model_overrides: model 'resnext29_8x64d' has no field\(s\) num_class",
        ),
        ({"dtype": "float16"}, r"config.dtype: 'float16' is not one of"),
        ({"skip_nonfinite_steps": -1}, r"config.skip_nonfinite_steps must be >= 0, got -1"),
        (
            {"model": "enas_macro", "model_overrides": {"num_layers": 3, "num_branches": 4, "arc": "0 1 0 4 1 1"}},
            r"config.model_overrides.arc: .*layer 2.*op id 4",
        ),
        (
            {"model": "enas_macro", "model_overrides": {"num_layers": 3, "arc": "0 1 0 3 1"}},
            r"config.model_overrides.arc: arc has 5 integers, expected 6 for 3 layers",
        ),
        (
            {"model": "enas_macro_shared"},
            r"config.model: 'enas_macro_shared' is the ENAS search space .* use --config.model=enas_macro with "
            r"--config.model_overrides.arc=",
        ),
        ({"task": "detection"}, r"config.task: unknown task 'detection'; registered: classification, .*search"),
        ({"image_size": 0}, r"config.image_size: expected a positive int, got 0"),
        ({"learning_rate_batch_size": 0}, r"config.learning_rate_batch_size must be None or a positive int, got 0"),
        ({"schedule": "staircase", "lr_decay_every_epochs": -1.0}, r"config.lr_decay_every_epochs must be None or > 0"),
        ({"eval_every_epochs": 0.0}, r"config.eval_every_epochs must be > 0, got 0.0"),
        ({"steps_per_dispatch": 0}, r"config.steps_per_dispatch must be >= 1, got 0"),
    ],
)
def test_bad_config_names_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(config_with(**fields), device_count=8)


def test_training_checks_the_config_before_compiling(tmp_path):
    with compiles_nothing(), pytest.raises(ConfigError, match="config.learning_rate"):
        train_and_evaluate(config_with(learning_rate=-1.0), str(tmp_path))
    assert not list(tmp_path.iterdir()), "nothing is written for a config that cannot run"


def test_init_from_without_a_checkpoint_is_a_user_error_before_compiling(tmp_path):
    with compiles_nothing(), pytest.raises(errors.CheckpointNotFoundError,
                                           match=r"config.init_from: no finished checkpoint in .*/empty"):
        train_and_evaluate(config_with(init_from=str(tmp_path / "empty")), str(tmp_path / "run"))
    assert issubclass(errors.CheckpointNotFoundError, errors.UserError)


def test_mistyped_override_key_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/quickstart.py", "--workdir", str(tmp_path),
         "--config.learning_rat=0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "train.py: unknown config field 'learning_rat' Did you mean \"learning_rate\" instead of \"learning_rat\"?"
    ], result.stderr[-2000:]


def test_unprepared_dataset_is_one_line_from_train_py_before_tensorflow_is_imported(tmp_path):
    """TensorFlow's import is most of a launch's first seconds: the refusal must not wait for it. Here any import
    of it leaves a mark (and fails), so the claim holds on any machine, however slow."""
    empty = tmp_path / "tensorflow_datasets"
    empty.mkdir()
    poisoned = tmp_path / "poisoned" / "tensorflow"
    poisoned.mkdir(parents=True)
    mark = tmp_path / "tensorflow_was_imported"
    (poisoned / "__init__.py").write_text(f"open({str(mark)!r}, 'w').close()\nraise ImportError('poisoned')\n")
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/quickstart.py", "--workdir", str(tmp_path / "run"),
         "--config.dataset=cifar10", f"--config.data_dir={empty}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(poisoned.parent), os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: config.dataset: 'cifar10' is not prepared in {empty}: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not mark.exists(), "TensorFlow was imported before the dataset was found missing"
    assert not (tmp_path / "run").exists(), "nothing is written for a run that cannot read its data"


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    config = config_with(learning_rate=1e30, num_train_steps=30, log_every_steps=1, schedule="constant")
    config.model_overrides.stage_sizes = (1, 1, 1)
    config.model_overrides.stage_planes = (16, 16, 16)
    stops = r"(loss|gradient norm|parameter norm) is (nan|inf) at step (\d+): the run stops here"
    with pytest.raises(NonFiniteLossError, match=stops) as failure:
        train_and_evaluate(config, str(tmp_path))
    bad_step = int(failure.value.args[0].split("at step ")[1].split(":")[0])
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, bad_step)), "every step before the bad one is logged, the bad one is not"


@pytest.mark.parametrize(
    "args, message",
    [
        (("127.0.0.1:1234", None, None), r"^--num_processes and --process_id missing: give all of"),
        ((None, 2, None), r"^--coordinator_address and --process_id missing"),
        (("127.0.0.1:1234", 2, 2), r"^--process_id=2 is not in \[0, --num_processes=2\)$"),
    ],
)
def test_incomplete_multihost_flags_are_one_line(args, message):
    with pytest.raises(errors.LaunchError, match=message):
        distributed.initialize(*args)
    assert distributed.initialize() is False, "no flags and no cluster: one process, nothing to join"
