"""What a run reports: a progress line, TensorBoard scalars and `metrics.jsonl` in the workdir.

`metrics.jsonl` holds one JSON object per log point with a `step` field; eval metrics are named
`eval_*`. TensorBoard goes through tensorboardX so the trainer never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

from jaxnets.checkpoints.layout import absolute, is_local
from jaxnets.storage import retry_first_event_upload

log = logging.getLogger("jaxnets")

METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class Report:
    """What a run reports at one step, as a listener (`train_and_evaluate(..., on_report=f)`) receives it."""

    step: int
    total_steps: int
    metrics: dict[str, float]  # as written to metrics.jsonl: train_* (with images/s), eval_*, a task's epoch scalars
    eta_seconds: float | None  # from the speed of the last log interval; None before there is one


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch where torch is not loaded yet: tensorboardX imports
    torch when it is installed only to accept torch tensors, which the reporter never passes, and that import was
    3 of the 24 s of a quickstart launch. (torch imports normally afterwards: nothing of it is left behind. Meant
    for the thread that builds the run, as train.py and notebooks do: an `import torch` racing it elsewhere fails.)"""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter  # (here, not at the top: see above)
    else:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX takes as "not installed"
        try:
            from tensorboardX import SummaryWriter  # (here, not at the top: see above)
        finally:
            if sys.modules.get("torch", False) is None:  # (not a torch that another thread imported meanwhile)
                del sys.modules["torch"]
    retry_first_event_upload()
    return SummaryWriter


class Reporter:
    def __init__(self, workdir, total_steps: int, steps_per_epoch: int, global_batch_size: int,
                 is_main_process: bool = True, start_step: int = 0,
                 on_report: Callable[[Report], None] | None = None):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.global_batch_size = global_batch_size
        self.enabled = is_main_process
        self._last_time: float | None = None
        self._last_step: int | None = None
        self._paused_seconds = 0.0  # since the last progress point: not training (evaluations)
        self._eta_seconds: float | None = None
        self._on_report = on_report
        self._writer = None
        if self.enabled:
            workdir = absolute(workdir)
            self._writer = _summary_writer()(str(workdir), flush_secs=30)  # (tensorboardX writes gs:// itself)
            self._workdir = workdir
            self._start_step = start_step
            self._logs: dict[str, _JsonLines] = {}
            self._log(METRICS_FILE)  # truncated to the resumed step now, not at the first write

    def write(self, step: int, metrics: dict) -> None:
        """Records scalars; `train_*` points also print a progress line with images/s and ETA."""
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._log(METRICS_FILE).write({"step": step, **scalars})
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        if self._on_report is not None:
            try:
                self._on_report(Report(step, self.total_steps, scalars, self._eta_seconds))
            except Exception as e:  # noqa: BLE001  a listener (a plot) must never stop the training it watches
                log.warning("on_report listener failed at step %d: %s: %s", step, type(e).__name__, e)

    def record(self, file_name: str, step: int, record: dict) -> None:
        """Appends `{"step": step, **record}` (any JSON) to the workdir's `file_name`, a JSON-lines log that a
        resume truncates to its step like metrics.jsonl."""
        if self.enabled:
            self._log(file_name).write({"step": step, **record})

    def _log(self, file_name: str) -> _JsonLines:
        if file_name not in self._logs:
            self._logs[file_name] = _JsonLines(self._workdir / file_name, self._start_step)
        return self._logs[file_name]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in the block is not training: left out of the next images/s (not of the ETA)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused_seconds += time.perf_counter() - start

    def progress(self, step: int, metrics: dict) -> None:
        now = time.perf_counter()
        extra = {}
        if self._last_time is not None and step > self._last_step:
            steps, seconds = step - self._last_step, now - self._last_time
            extra["images_per_second"] = self.global_batch_size * steps / (seconds - self._paused_seconds)
            self._eta_seconds = seconds / steps * (self.total_steps - step)  # evaluations included
            eta = _format_duration(self._eta_seconds)
        else:
            eta = "?"
        self._last_time, self._last_step, self._paused_seconds = now, step, 0.0
        metrics = {**metrics, **extra}
        self.write(step, metrics)
        if self.enabled:
            epoch = step / self.steps_per_epoch
            rate = f"{extra['images_per_second']:.0f} img/s" if extra else "- img/s"
            # A task's loss and learning rate when it reports them (the protocol asks for no particular metric).
            shown = "".join(f"  {name} {float(metrics[key]):.5g}" for name, key in
                            (("loss", "train_loss"), ("lr", "train_learning_rate")) if key in metrics)
            log.info("step %d/%d  epoch %.2f%s  %s  ETA %s", step, self.total_steps, epoch, shown, rate, eta)

    def close(self) -> None:
        if self.enabled:
            self._writer.close()
            for log_file in self._logs.values():
                log_file.close()


class _JsonLines:
    """A JSON-lines file of step-stamped lines. A resumed run's file reads as one run: the lines a killed run
    wrote after its last checkpoint go (the resumed run writes them again)."""

    def __init__(self, path, start_step: int):
        self._path = path
        self._lines = _lines_until(path, start_step)
        path.write_text("".join(self._lines))
        self._append = is_local(path)  # cloud storage has no append: there the file is rewritten
        self._file = open(path, "a") if self._append else None  # noqa: SIM115  closed in close()

    def write(self, value: dict) -> None:
        line = json.dumps(value) + "\n"
        if self._append:
            self._file.write(line)
            self._file.flush()
        else:
            self._lines.append(line)
            self._path.write_text("".join(self._lines))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def last_evaluation(workdir) -> dict[str, float]:
    """The `eval_*` metrics of the last evaluation in the workdir's metrics.jsonl; {} when there is none."""
    path = absolute(workdir) / METRICS_FILE
    if not path.exists():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        evaluation = {k: v for k, v in record.items() if k.startswith("eval_")} if isinstance(record, dict) else {}
        if evaluation:
            return evaluation
    return {}


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _lines_until(path, step: int) -> list[str]:
    """The lines of `path` (if it exists) up to and including `step`, less a run's closing record (`"final": true`),
    which the run writes again when it completes."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines(keepends=True)
            if (line_step := _line_step(line)) is not None and line_step <= step and '"final": true' not in line]


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a blank line, or one cut short by a kill
