"""Supervised image classification (`config.task = "classification"`): images -> labels, cross-entropy.

The task of every recipe but the ENAS search's, and of a search's final network. It reads the engine's fields
(optimizer, schedule, EMA, label smoothing, BN synchronisation) and owns one section, `config.classification`: the
fine-tuning controls (`jaxnets.tasks.finetune`: a frozen part, the backbone's learning-rate multiplier, frozen BN
statistics).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from jaxnets.errors import ConfigError
from jaxnets.models import create_model, create_model_from_config, model_entry
from jaxnets.models.enas import parse_arc
from jaxnets.optim import create_optimizer, create_schedule
from jaxnets.tasks import finetune
from jaxnets.tasks.inputs import NetworkInputs
from jaxnets.tasks.supervised import DIVERGENCE_ADVICE, FINITE_METRICS, TrainState, cross_entropy, supervised_step
from jaxnets.train import register_task
from jaxnets.train.parallel import DATA_AXIS

# Models that supervised training cannot train as they are, and what to use instead.
_NOT_CLASSIFIABLE = {
    "enas_macro_shared": (
        "is the ENAS search space (shared weights; the architecture is an input of every step), which supervised "
        "training cannot train as one network: to train one architecture use --config.model=enas_macro with "
        "--config.model_overrides.arc='...' (configs/enas_macro_final_cifar10.py trains the published one)"
    ),
}


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Trains `model` on {"image", "label"} batches; evaluates top-1, top-5 and loss on masked eval batches."""

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    config: Any  # the resolved run config (label smoothing, weight decay, EMA, BN synchronisation)
    image_shape: tuple[int, int, int]  # (H, W, C) of the network's input
    inputs: NetworkInputs = NetworkInputs(sound=None)  # what the batches hold: images, or clips (sound)
    frozen: str | None = None  # module paths not trained (finetune.frozen_pattern), None: none
    frozen_batch_norm: str | None = None  # BN layers normalising with and keeping their running statistics

    finite_metrics = FINITE_METRICS
    divergence_advice = DIVERGENCE_ADVICE
    best_metric = "eval_top1"

    def init_state(self) -> TrainState:
        """Parameters initialised on one zero image of `image_shape`. Pure: jit it."""
        init_key, state_key = jax.random.split(jax.random.key(self.config.seed))
        variables = self.model.init(init_key, jnp.zeros((1, *self.image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
            rng=jax.random.key_data(state_key),
            ema_params=params if self.config.ema_decay is not None else None,
        )

    def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        """One optimizer update on this device's shard of the global batch."""
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        dropout_key = jax.random.fold_in(step_key, jax.lax.axis_index(DATA_AXIS))
        batch = {"image": self.inputs.training(batch), "label": batch["label"]}
        return supervised_step(state, batch, apply_fn=self.model.apply, tx=self.tx, schedule=self.schedule,
                               config=self.config, dropout_key=dropout_key, frozen=self.frozen,
                               frozen_batch_norm=self.frozen_batch_norm)

    def eval_step(self, state: TrainState, batch) -> dict:
        """Sums over this device's shard, psum'd: padded examples (mask False) count nowhere."""
        variables = state.eval_variables()
        logits = self.inputs.evaluation_logits(lambda x: self.model.apply(variables, x, train=False), batch)
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        sums = {
            "loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
            "count": jnp.sum(mask),
        }
        return jax.lax.psum(sums, DATA_AXIS)

    @staticmethod
    def eval_metrics(sums: dict) -> dict:
        """The summed eval counts of a whole pass -> the reported `eval_*` metrics."""
        count = float(sums["count"])
        return {"eval_loss": float(sums["loss"]) / count, "eval_top1": float(sums["top1"]) / count,
                "eval_top5": float(sums["top5"]) / count, "eval_examples": count}


def build(config, dataset, steps_per_epoch: int) -> ClassificationTask:
    section, classifier = config.classification, model_entry(config.model).classifier
    model = create_model_from_config(config, dataset.num_classes)
    frozen = finetune.frozen_pattern(section, classifier)
    if frozen is not None:  # (traced, not compiled: the parameters' paths)
        image = jnp.zeros((1, *dataset.image_shape), jnp.float32)
        finetune.check_frozen_matches(section, frozen, jax.eval_shape(model.init, jax.random.key(0), image)["params"])
    tx = finetune.by_part(create_optimizer(config, steps_per_epoch), frozen=frozen, classifier=classifier,
                          backbone_multiplier=section.backbone_lr_multiplier)
    return ClassificationTask(
        model=model,
        tx=tx,
        schedule=create_schedule(config, steps_per_epoch),
        config=config,
        image_shape=tuple(dataset.image_shape),
        inputs=NetworkInputs.of(config),
        frozen=frozen,
        frozen_batch_norm=finetune.frozen_batch_norm_pattern(section, classifier),
    )


def check(config, device_count: int) -> None:
    """What classification needs of a resolved config beyond the engine's checks."""
    del device_count
    finetune.check(config.classification)
    if config.model in _NOT_CLASSIFIABLE:
        raise ConfigError(f"config.model: {config.model!r} {_NOT_CLASSIFIABLE[config.model]}")
    arc = config.model_overrides.get("arc")
    if isinstance(arc, str):  # a fixed ENAS network's architecture, checked before anything compiles
        model = create_model(config.model, **config.model_overrides.to_dict())
        try:
            parse_arc(arc, model.num_layers, model.num_branches, model.whole_channels)
        except ValueError as e:
            raise ConfigError(f"config.model_overrides.arc: {e}") from None


register_task("classification", build, check=check, config_section=finetune.config_section)
