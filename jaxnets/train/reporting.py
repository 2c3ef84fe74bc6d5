"""What a run reports: a progress line, TensorBoard scalars and `metrics.jsonl` in the workdir.

`metrics.jsonl` holds one JSON object per log point with a `step` field; eval metrics are named
`eval_*`. TensorBoard goes through tensorboardX so the trainer never imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

log = logging.getLogger("jaxnets")

METRICS_FILE = "metrics.jsonl"


class Reporter:
    def __init__(self, workdir: str, total_steps: int, steps_per_epoch: int, global_batch_size: int,
                 is_main_process: bool = True, start_step: int = 0):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.global_batch_size = global_batch_size
        self.enabled = is_main_process
        self._last_time: float | None = None
        self._last_step: int | None = None
        self._writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(workdir, flush_secs=30)
            path = os.path.join(workdir, METRICS_FILE)
            _forget_lines_after(path, start_step)  # a resumed run's metrics.jsonl reads as one run
            self._jsonl = open(path, "a")  # noqa: SIM115  closed in close()

    def write(self, step: int, metrics: dict) -> None:
        """Records scalars; `train_*` points also print a progress line with images/s and ETA."""
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)

    def progress(self, step: int, metrics: dict) -> None:
        now = time.perf_counter()
        extra = {}
        if self._last_time is not None and step > self._last_step:
            seconds_per_step = (now - self._last_time) / (step - self._last_step)
            extra["images_per_second"] = self.global_batch_size / seconds_per_step
            eta = _format_duration(seconds_per_step * (self.total_steps - step))
        else:
            eta = "?"
        self._last_time, self._last_step = now, step
        metrics = {**metrics, **extra}
        self.write(step, metrics)
        if self.enabled:
            epoch = step / self.steps_per_epoch
            rate = f"{extra['images_per_second']:.0f} img/s" if extra else "- img/s"
            log.info(
                "step %d/%d  epoch %.2f  loss %.4f  lr %.5g  %s  ETA %s", step, self.total_steps, epoch,
                float(metrics["train_loss"]), float(metrics["train_learning_rate"]), rate, eta,
            )

    def close(self) -> None:
        if self.enabled:
            self._writer.close()
            self._jsonl.close()


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _forget_lines_after(path: str, step: int) -> None:
    """Drops the lines a killed run wrote after its last checkpoint (the resumed run writes them again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if (line_step := _line_step(line)) is not None and line_step <= step]
    if len(kept) != len(lines):
        with open(path, "w") as f:
            f.writelines(kept)


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a blank line, or one cut short by a kill
