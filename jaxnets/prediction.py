"""A trained model's predictions on a split, with the images as they look: for notebooks and `jaxnets.report`.

    model, variables, config = jaxnets.load_checkpoint(workdir)
    predictions = jaxnets.predict(model, variables, config)          # the run's eval split (the test split)
    predictions.accuracy, predictions.predicted, predictions.images  # images in [0, 1], for display

A run on sound keeps the log-mel spectrograms (dB) of its clips' first crops as `images` (`kind` "spectrogram").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from jaxnets import data
from jaxnets.sound.frontend import log_mel
from jaxnets.tasks.inputs import NetworkInputs


@dataclasses.dataclass(frozen=True)
class Predictions:
    labels: np.ndarray  # [N] int: the true classes
    logits: np.ndarray  # [N, K] float32
    images: np.ndarray  # [min(N, images_kept), H, W, C] float32 in [0, 1]: the first examples as the model saw them
    kind: str = "image"  # "spectrogram": images are log-mel spectrograms in dB, [n_mels, frames, 1] each

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=-1)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predicted == self.labels))


def predict(model, variables, config, *, split: str | None = None, limit: int | None = None,
            batch_size: int = 256, images_kept: int = 64) -> Predictions:
    """`model` on `split` (default: config.eval_split, the dataset's test split unless the run held one out), one
    device, BN in inference mode; at most `limit` examples. Reads the data through the run's own eval pipeline,
    so the images are preprocessed as in training's evaluations."""
    config = config.copy_and_resolve_references()
    if split is not None:
        with config.unlocked():
            config.eval_split = split
    spec = data.check_data_config(config).spec
    inputs = NetworkInputs.of(config)

    @jax.jit  # (variables passed, not baked in as constants)
    def apply(variables, batch):
        return inputs.evaluation_logits(functools.partial(model.apply, variables, train=False), batch)

    if inputs.sound is not None:
        shown = jax.jit(lambda clips: log_mel(clips if clips.ndim == 2 else clips[:, 0], inputs.sound)[..., None])
    labels, logits, images = [], [], []
    seen = 0
    for batch in data.eval_iterator(config, batch_size):
        keep = batch["mask"]
        if limit is not None:
            keep = keep & (np.cumsum(keep) <= limit - seen)
        if not keep.any():
            break
        logits.append(np.asarray(apply(variables, batch))[keep])
        labels.append(batch["label"][keep])
        if sum(len(i) for i in images) < images_kept:
            images.append(np.asarray(shown(batch["image"]))[keep] if inputs.sound else batch["image"][keep])
        seen += int(keep.sum())
    if not labels:
        raise ValueError(f"config.eval_split {config.eval_split!r} has no examples")
    labels, logits = np.concatenate(labels), np.concatenate(logits).astype(np.float32)
    if inputs.sound is not None:
        return Predictions(labels, logits, np.concatenate(images)[:images_kept], kind="spectrogram")
    pixels = np.concatenate(images)[:images_kept] * np.asarray(spec.std) + np.asarray(spec.mean)  # un-normalised
    return Predictions(labels, logits, np.clip(pixels, 0.0, 1.0).astype(np.float32))
