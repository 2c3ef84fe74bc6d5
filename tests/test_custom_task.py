"""A task defined outside the package (tests/distillation_task.py: a teacher distilled into a student, no labels)
trains through train.py's loop, checkpoints, and resumes to the numbers of an uninterrupted run."""

import json
import os
import subprocess
import sys

import distillation_task
import numpy as np
import pytest
from helpers import REPO

from jaxnets.errors import ConfigError
from jaxnets.train import resolve_config, train_and_evaluate


def losses(workdir) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def train_py(workdir, *flags):
    command = [sys.executable, "train.py", "--config", "tests/distillation_task.py", "--workdir", str(workdir), *flags]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_task_registered_outside_the_package_trains_saves_and_resumes_through_train_py(tmp_path):
    uninterrupted = train_and_evaluate(distillation_task.get_config(), str(tmp_path / "reference"))
    reference = losses(tmp_path / "reference")
    assert sorted(reference) == list(range(1, 13))
    assert reference[12] < 0.8 * reference[1]  # the student learns the teacher
    assert 0.0 <= uninterrupted["eval_agreement"] <= 1.0

    workdir = tmp_path / "run"
    first_half = distillation_task.get_config()
    first_half.num_train_steps = 6  # saves step 6 and stops there
    train_and_evaluate(first_half, str(workdir))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6]
    # A fresh process (the recipe file registers the task), with a compilation cache of its own: train.py fills it.
    resumed = train_py(workdir, f"--compilation_cache={tmp_path / 'cache'}")
    assert "resuming from" in resumed.stderr and "at step 6" in resumed.stderr
    assert list((tmp_path / "cache").iterdir()), "train.py's --compilation_cache holds the programs it compiled"
    after_resume = losses(workdir)
    assert sorted(after_resume) == list(range(1, 13))
    np.testing.assert_array_equal([after_resume[s] for s in range(1, 13)], [reference[s] for s in range(1, 13)])
    final = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["eval_agreement"] == uninterrupted["eval_agreement"]


def test_a_task_section_is_checked_like_any_other_field():
    config = distillation_task.get_config()
    del config["distill"]
    with pytest.raises(ConfigError, match=r"^config.distill: missing, the 'distill' task's section"):
        resolve_config(config, device_count=1)
