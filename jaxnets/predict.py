"""A trained model's predictions on a split, with the images as they look: for notebooks and `jaxnets.report`.

    model, variables, config = jaxnets.load_checkpoint(workdir)
    predictions = jaxnets.predict(model, variables, config)          # the run's eval split (the test split)
    predictions.accuracy, predictions.predicted, predictions.images  # images in [0, 1], for display
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from jaxnets import data


@dataclasses.dataclass(frozen=True)
class Predictions:
    labels: np.ndarray  # [N] int: the true classes
    logits: np.ndarray  # [N, K] float32
    images: np.ndarray  # [min(N, images_kept), H, W, C] float32 in [0, 1]: the first examples as the model saw them

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
    apply = jax.jit(functools.partial(model.apply, train=False))  # (variables passed, not baked in as constants)
    labels, logits, images = [], [], []
    seen = 0
    for batch in data.eval_iterator(config, batch_size):
        keep = batch["mask"]
        if limit is not None:
            keep = keep & (np.cumsum(keep) <= limit - seen)
        if not keep.any():
            break
        logits.append(np.asarray(apply(variables, batch["image"]))[keep])
        labels.append(batch["label"][keep])
        if sum(len(i) for i in images) < images_kept:
            images.append(batch["image"][keep])
        seen += int(keep.sum())
    if not labels:
        raise ValueError(f"config.eval_split {config.eval_split!r} has no examples")
    shown = np.concatenate(images)[:images_kept] * np.asarray(spec.std) + np.asarray(spec.mean)  # un-normalised
    return Predictions(labels=np.concatenate(labels), logits=np.concatenate(logits).astype(np.float32),
                       images=np.clip(shown, 0.0, 1.0).astype(np.float32))
