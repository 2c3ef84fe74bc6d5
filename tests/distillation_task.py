"""A task that jaxnets does not ship, defined and registered outside the package, as a user would: distillation
of a fixed teacher into the student `config.model` on the run's images, with no use of their labels.

This file is also a recipe: `python train.py --config tests/distillation_task.py` (with tests/ on PYTHONPATH or
not: it registers the task when train.py loads it). The engine learns of the task only through the registry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from jaxnets.config import base_config
from jaxnets.models import create_model_from_config
from jaxnets.optim import create_optimizer, create_schedule
from jaxnets.train import list_tasks, register_task
from jaxnets.train.parallel import DATA_AXIS

TASK = "distill"


def distill_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 2.0  # softens both distributions (Hinton et al. 2015); the loss is scaled by its square
    c.teacher_seed = 7
    return c


class Teacher(nn.Module):
    """A fixed random linear classifier of the flattened image: targets the student can learn."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        return 3.0 * nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))


@flax.struct.dataclass
class DistillState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    teacher: Any  # the teacher's parameters (saved with the state: a resume needs no other file)

    def eval_variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}

    def with_model_variables(self, params, batch_stats) -> DistillState:
        return self.replace(params=params, batch_stats=batch_stats)


def soft_cross_entropy(student_logits, teacher_logits, temperature: float):
    """KL(teacher || student) at the temperature, times its square, per example."""
    targets = jax.nn.softmax(teacher_logits / temperature)
    log_student = jax.nn.log_softmax(student_logits / temperature)
    return temperature**2 * jnp.sum(targets * (jnp.log(targets + 1e-12) - log_student), axis=-1)


@dataclasses.dataclass(frozen=True)
class DistillTask:
    student: nn.Module
    teacher: Teacher
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    config: Any
    image_shape: tuple[int, int, int]

    finite_metrics = {"loss": "distillation loss"}
    divergence_advice = "lower config.learning_rate"
    best_metric = "eval_agreement"

    def init_state(self) -> DistillState:
        images = jnp.zeros((1, *self.image_shape), jnp.float32)
        variables = self.student.init(jax.random.key(self.config.seed), images, train=False)
        teacher = self.teacher.init(jax.random.key(self.config.distill.teacher_seed), images)["params"]
        return DistillState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                            batch_stats=variables.get("batch_stats", {}), opt_state=self.tx.init(variables["params"]),
                            teacher=teacher)

    def train_step(self, state: DistillState, batch) -> tuple[DistillState, dict]:
        temperature = self.config.distill.temperature
        teacher_logits = self.teacher.apply({"params": state.teacher}, batch["image"])

        def loss_fn(params):
            logits, updates = self.student.apply({"params": params, "batch_stats": state.batch_stats},
                                                 batch["image"], train=True, mutable=["batch_stats"])
            loss = jax.lax.pmean(soft_cross_entropy(logits, teacher_logits, temperature).mean(), DATA_AXIS)
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=jax.lax.pmean(batch_stats, DATA_AXIS), opt_state=opt_state)
        return new_state, {"loss": loss, "learning_rate": self.schedule(state.step)}

    def eval_step(self, state: DistillState, batch) -> dict:
        logits = self.student.apply(state.eval_variables(), batch["image"], train=False)
        teacher_logits = self.teacher.apply({"params": state.teacher}, batch["image"])
        mask = batch["mask"].astype(jnp.float32)
        sums = {"agree": jnp.sum((jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)) * mask),
                "count": jnp.sum(mask)}
        return jax.lax.psum(sums, DATA_AXIS)

    @staticmethod
    def eval_metrics(sums: dict) -> dict:
        return {"eval_agreement": float(sums["agree"]) / float(sums["count"]), "eval_examples": float(sums["count"])}


def build(config, dataset, steps_per_epoch: int) -> DistillTask:
    return DistillTask(student=create_model_from_config(config, dataset.num_classes),
                       teacher=Teacher(num_classes=dataset.num_classes),
                       tx=create_optimizer(config, steps_per_epoch), schedule=create_schedule(config, steps_per_epoch),
                       config=config, image_shape=tuple(dataset.image_shape))


if TASK not in list_tasks():  # (pytest imports this module; train.py loads it again as a recipe file)
    register_task(TASK, build, config_section=distill_section)


def get_config():
    c = base_config(TASK)
    c.model = "cifar_resnext50"
    c.model_overrides.stage_sizes = (1, 1)
    c.model_overrides.stage_planes = (16, 32)
    c.model_overrides.groups = 4
    c.dataset = "digits"
    c.augment = False
    c.global_batch_size = c.eval_batch_size = 64
    c.num_epochs = 1
    c.num_train_steps = 12
    c.schedule = "constant"
    c.learning_rate = 0.05
    c.weight_decay = 0.0
    c.log_every_steps = 1
    c.eval_every_epochs = 1.0
    c.checkpoint_every_steps = 6
    return c
