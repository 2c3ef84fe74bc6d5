"""Pictures of a run, as matplotlib Figures: training curves, a confusion matrix, a grid of predictions and an
ENAS macro architecture. The notebooks in colab/ show them; `python -m jaxnets.report WORKDIR` writes them.

    fig = plots.training_curves(workdir)                    # from the run's metrics.jsonl
    fig = plots.confusion_matrix(labels, predicted, class_names)
    fig = plots.prediction_grid(images, labels, predicted, class_names)
    fig = plots.spectrogram_grid(spectrograms, labels, predicted, class_names)   # a run on sound
    fig = plots.enas_architecture(model)                    # an ENASMacroChild: its arc, reductions, parameters
    train_and_evaluate(config, workdir, on_report=plots.LiveCurves())   # curves and progress while it trains

Figures are built without pyplot (no global state, nothing shown twice); in a notebook the last expression of
a cell shows one, and `fig.savefig(path)` writes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from matplotlib.figure import Figure

from jaxnets.models.enas import OP_NAMES
from jaxnets.models.enas.ops import pool_layers
from jaxnets.train.reporting import METRICS_FILE, Report

# Op colours of the ENAS drawing (Okabe-Ito, readable by colour-blind eyes), in OP_NAMES order.
_OP_COLOURS = ("#0072B2", "#56B4E9", "#D55E00", "#E69F00", "#009E73", "#CC79A7")
_MISTAKE, _CORRECT = "#C62828", "#1B5E20"


def read_metrics(workdir) -> list[dict]:
    """The run's metrics.jsonl as a list of {"step": ..., name: value} records."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} the workdir of a jaxnets run?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_curves(workdir_or_records, *, title: str | None = None) -> Figure:
    """Loss, accuracy and learning rate against the step: train points as lines, evaluations as markers."""
    records = (read_metrics(workdir_or_records) if isinstance(workdir_or_records, (str, epath.PathLike))
               else list(workdir_or_records))
    panels = [
        ("loss", [k for k in ("train_loss", "eval_loss") if _has(records, k)]),
        ("accuracy", [k for k in ("train_accuracy", "eval_top1", "eval_top5", "controller_reward", "eval_mean_accuracy",
                                  "eval_best_accuracy") if _has(records, k)]),
        ("learning rate", [k for k in ("train_learning_rate",) if _has(records, k)]),
    ]
    panels = [(name, keys) for name, keys in panels if keys]
    fig = Figure(figsize=(4.2 * max(1, len(panels)), 3.4), layout="constrained")
    for ax, (name, keys) in zip(fig.subplots(1, max(1, len(panels)), squeeze=False)[0], panels, strict=False):
        for key in keys:
            steps, values = _series(records, key)
            style = dict(marker="o", markersize=4) if key.startswith("eval_") else dict(linewidth=1.2)
            ax.plot(steps, values, label=key, **style)
        ax.set(xlabel="step", title=name)
        if name == "accuracy":
            ax.set_ylim(0, 1.02)
        if name == "loss" and min(min(_series(records, k)[1]) for k in keys) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not panels:
        fig.text(0.5, 0.5, "no metrics yet", ha="center")
    rates = _series(records, "images_per_second")[1]
    suffix = f"  ({np.median(rates):,.0f} img/s)" if len(rates) else ""
    fig.suptitle((title or "training curves") + suffix)
    return fig


def confusion_matrix(labels, predicted, class_names: Sequence[str] = (), *, title: str | None = None) -> Figure:
    """Counts of (true class, predicted class), coloured by the share of each true class."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    num_classes = max(len(class_names), int(labels.max(initial=0)) + 1, int(predicted.max(initial=0)) + 1)
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    names = list(class_names) or [str(i) for i in range(num_classes)]
    size = min(12.0, 2.5 + 0.45 * num_classes)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if num_classes <= 30:
        ax.set_xticks(range(num_classes), names, rotation=90 if num_classes > 10 else 0)
        ax.set_yticks(range(num_classes), names)
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{title or 'confusion matrix'}: {accuracy:.2%} of {counts.sum():,} correct")
    return fig


def prediction_grid(images, labels, predicted, class_names: Sequence[str] = (), *, count: int = 32,
                    columns: int = 8, mistakes_first: bool = False) -> Figure:
    """Images with their predicted and true class; a mistake has a red title "predicted (true)". `labels` and
    `predicted` may run longer than `images` (jaxnets.predict keeps the first images only)."""

    def draw(ax, image):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")

    return _grid(images, labels, predicted, class_names, count=count, columns=columns,
                 mistakes_first=mistakes_first, draw=draw, cell=(1.5, 1.7))


def spectrogram_grid(spectrograms, labels, predicted, class_names: Sequence[str] = (), *, count: int = 16,
                     columns: int = 4, mistakes_first: bool = False) -> Figure:
    """prediction_grid for sound: log-mel spectrograms [N, n_mels, frames(, 1)] in dB (jaxnets.predict's for a run
    on sound), low frequencies at the bottom, time to the right, each on the same 80 dB colour range below its
    loudest bin."""
    spectrograms = np.asarray(spectrograms)

    def draw(ax, spectrogram):
        spectrogram = spectrogram[..., 0] if spectrogram.ndim == 3 else spectrogram
        ax.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", vmin=spectrogram.max() - 80.0,
                  vmax=spectrogram.max(), interpolation="nearest")

    return _grid(spectrograms, labels, predicted, class_names, count=count, columns=columns,
                 mistakes_first=mistakes_first, draw=draw, cell=(2.4, 1.8))


def _grid(images, labels, predicted, class_names, *, count, columns, mistakes_first, draw, cell) -> Figure:
    images = np.asarray(images)
    labels, predicted = np.asarray(labels)[: len(images)], np.asarray(predicted)[: len(images)]
    order = np.arange(len(labels))
    if mistakes_first:
        order = np.concatenate([order[predicted != labels], order[predicted == labels]])
    order = order[:count]
    rows = max(1, -(-len(order) // columns))
    fig = Figure(figsize=(cell[0] * columns, cell[1] * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    name = (lambda i: class_names[i]) if class_names else str
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, order, strict=False):
        draw(ax, images[i])
        right = predicted[i] == labels[i]
        text = name(predicted[i]) if right else f"{name(predicted[i])} ({name(labels[i])})"
        ax.set_title(text, fontsize=8, color=_CORRECT if right else _MISTAKE)
        if not right:
            for spine in ax.spines.values():
                spine.set(visible=True, color=_MISTAKE, linewidth=2)
            ax.axis("on")
            ax.set(xticks=[], yticks=[])
    wrong = int(np.sum(predicted[order] != labels[order]))
    fig.suptitle(f"predicted (true); {wrong} of {len(order)} shown are mistakes, in red")
    return fig


def enas_architecture(model, *, image_shape: Sequence[int] = (32, 32, 3), title: str | None = None) -> Figure:
    """An ENAS macro child (`jaxnets.models.enas.ENASMacroChild`, whole-channel arcs): one node per layer coloured
    by its op, its parameter count below, skip connections as arcs above, and the reductions (spatial size
    halved, channels doubled) as dashed lines."""
    arc = model._checked_arc()
    if not arc.whole_channels:
        raise ValueError("enas_architecture draws whole-channel arcs (one op per layer), not channel-mode ones")
    parameters = layer_parameters(model, image_shape=image_shape)
    num_layers = arc.num_layers
    fig = Figure(figsize=(max(6.0, 0.62 * (num_layers + 1) + 1.5), 4.2), layout="constrained")
    ax = fig.subplots()
    xs = np.arange(-1, num_layers)  # -1: the stem
    ax.plot(xs, np.zeros_like(xs), color="#555555", linewidth=1.5, zorder=1)
    skips = 0
    for k, layer in enumerate(arc.layers):
        for i, bit in enumerate(layer.skips):  # bit i: an input from node i - 1 (the stem is -1)
            if bit:
                skips += 1
                start, span = i - 1, k - (i - 1)
                t = np.linspace(0, np.pi, 40)
                ax.plot(start + span * (1 - np.cos(t)) / 2, 0.18 * span ** 0.8 * np.sin(t), color="#888888",
                        linewidth=0.8, alpha=0.8, zorder=0)
    colours = ["#333333"] + [_OP_COLOURS[layer.op] for layer in arc.layers]
    ax.scatter(xs, np.zeros_like(xs), s=260, c=colours, edgecolors="white", linewidths=1.5, zorder=2)
    for x, count in zip(xs, [parameters["stem"]] + parameters["layers"], strict=True):
        ax.text(x, -0.5, _short_count(count), ha="center", va="top", fontsize=7, rotation=90)
    for k in pool_layers(num_layers):
        ax.axvline(k + 0.5, color="#C62828", linestyle="--", linewidth=1)
        ax.text(k + 0.5, -2.1, "reduce: size ½, channels ×2", color="#C62828", ha="center", fontsize=7)
    handles = [ax.scatter([], [], s=60, color=c, label=n) for c, n in zip(_OP_COLOURS, OP_NAMES, strict=True)]
    ax.legend(handles=handles, loc="upper left", fontsize=7, ncols=3, frameon=False)
    ax.set_xticks(xs, ["stem"] + [str(k) for k in range(num_layers)], fontsize=7)
    ax.set_yticks([])
    ax.set_ylim(-2.4, max(1.2, 0.18 * num_layers ** 0.8 + 0.4))
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("layer (parameters below each node)")
    total = parameters["total"]
    ax.set_title(f"{title or 'ENAS macro architecture'}: {num_layers} layers, {skips} skip connections, "
                 f"{model.num_filters} filters, {total / 1e6:.2f}M parameters")
    return fig


def layer_parameters(model, *, image_shape: Sequence[int] = (32, 32, 3)) -> dict:
    """{"stem": n, "layers": [n per layer, with the reductions after it], "total": n} of an ENAS macro child on
    images of `image_shape` (H, W, C), counted from its abstract initialisation (no arrays are made)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape))))
    counts = {"stem": 0, "layers": [0] * model.num_layers, "total": 0}
    for name, tree in shapes["params"].items():
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
        counts["total"] += count
        if name == "stem":
            counts["stem"] += count
        elif name.startswith("layer_"):
            counts["layers"][int(name.split("_")[1])] += count
        elif name.startswith("pool_at_"):
            counts["layers"][int(name.split("_")[2])] += count
    return counts


class LiveCurves:
    """Training curves and a progress line that redraw in a notebook while a run trains:

        train_and_evaluate(config, workdir, on_report=plots.LiveCurves())

    Redraws at most every `min_seconds` (and at every evaluation), so drawing never slows the run down much."""

    def __init__(self, min_seconds: float = 2.0):
        from IPython.display import display  # (fails here, before a run compiles, where there is no IPython)

        self._display = display
        self.records: list[dict] = []
        self.min_seconds = min_seconds
        self._drawn_at = -float("inf")
        self._handle = None

    def __call__(self, report: Report) -> None:
        self.records.append({"step": report.step, **report.metrics})
        now = time.monotonic()
        evaluated = any(k.startswith("eval_") for k in report.metrics)
        if not (evaluated or report.step == report.total_steps or now - self._drawn_at >= self.min_seconds):
            return
        self._drawn_at = now
        fig = training_curves(self.records, title=progress_line(report))
        if self._handle is None:
            self._handle = self._display(fig, display_id=True)
        else:
            self._handle.update(fig)


def progress_line(report: Report) -> str:
    """"step 300/1000 (30%), 2,100 img/s, ETA 0:00:41" for a report."""
    text = f"step {report.step}/{report.total_steps} ({report.step / report.total_steps:.0%})"
    rate = report.metrics.get("images_per_second")
    if rate is not None:
        text += f", {rate:,.0f} img/s"
    if report.eta_seconds is not None:
        seconds = int(report.eta_seconds)
        text += f", ETA {seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return text


def _has(records: list[dict], key: str) -> bool:
    return any(key in r for r in records)


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def _short_count(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}k" if count >= 1e3 else str(count)
