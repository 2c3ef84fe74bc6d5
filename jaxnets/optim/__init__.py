"""Optimisation: lr schedules, optax optimizers, weight decay and clipping, from the flat training config."""

from jaxnets.optim.config import OPTIMIZERS, SCHEDULES, WEIGHT_DECAY_MODES, check_optim_config
from jaxnets.optim.optimizers import clip_by_norm_per_tensor, create_optimizer, regularization_loss, weight_decay_mask
from jaxnets.optim.schedules import create_schedule

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "WEIGHT_DECAY_MODES",
    "check_optim_config",
    "clip_by_norm_per_tensor",
    "create_optimizer",
    "create_schedule",
    "regularization_loss",
    "weight_decay_mask",
]
