"""Fine-tuning controls, the classification task's config section (`config.classification`).

    c.classification.frozen = "backbone"          # a linear probe: only the classifier trains
    c.classification.frozen = "^(conv1|bn1|layer1_)"   # or any parts, by module path
    c.classification.backbone_lr_multiplier = 0.1  # everything but the classifier at a tenth of the rate
    c.classification.freeze_bn_statistics = True   # every BN normalises with, and keeps, its running statistics

A network's parts are named by module path: "layer1_0/conv1" holds the variables layer1_0/conv1/kernel. `frozen`
is a regular expression searched in each module's path ("" freezes nothing), or "backbone" for every module but
the model's classifier (its registry entry names it: "fc", or "classifier" for MobileNetV2). A frozen module's
parameters are never updated (no gradient flows into them and no weight decay applies), and a frozen BatchNorm
layer normalises with its running statistics and never updates them, in training as in evaluation: the frozen
part computes exactly what it computed before the run, bit for bit.
"""

from __future__ import annotations

import math
import numbers
import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxnets.errors import ConfigError

BACKBONE = "backbone"
EVERYTHING = ""  # re.search("", path) matches every path: the pattern of freeze_bn_statistics


def config_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.frozen = ""  # module paths not trained: a regular expression, or "backbone" (all but the classifier)
    c.backbone_lr_multiplier = 1.0  # every module but the classifier trains at learning_rate x this
    c.freeze_bn_statistics = False  # every BN layer normalises with, and keeps, its running statistics
    return c


def check(section) -> None:
    """One ConfigError line for a bad field of `config.classification`."""
    frozen = section.frozen
    if not isinstance(frozen, str):
        raise ConfigError(f"config.classification.frozen must be a regular expression or {BACKBONE!r}, "
                          f"got {frozen!r}")
    try:
        re.compile(frozen)
    except re.error as e:
        raise ConfigError(f"config.classification.frozen: {frozen!r} is not a regular expression ({e})") from None
    multiplier = section.backbone_lr_multiplier
    if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real) or not 0 < multiplier < math.inf:
        hint = " (to train the classifier alone: config.classification.frozen='backbone')" if multiplier == 0 else ""
        raise ConfigError(f"config.classification.backbone_lr_multiplier must be a number > 0, got {multiplier!r}"
                          f"{hint}")
    if not isinstance(section.freeze_bn_statistics, bool):
        raise ConfigError(f"config.classification.freeze_bn_statistics must be True or False, "
                          f"got {section.freeze_bn_statistics!r}")


def frozen_pattern(section, classifier: str) -> str | None:
    """The regular expression of the frozen modules' paths; None when nothing is frozen."""
    if section.frozen == BACKBONE:
        return f"^(?!{re.escape(classifier)}$)"  # every path but the classifier's
    return section.frozen or None


def check_frozen_matches(section, pattern: str | None, params) -> None:
    """ConfigError when `pattern` (frozen_pattern's) freezes no module of `params` (a tree of the model's
    parameters, shapes suffice) or every one of them: a mistyped pattern would silently train all or nothing."""
    if pattern is None:
        return
    modules = sorted({module_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]})
    frozen = [m for m in modules if re.search(pattern, m)]
    if not frozen:
        raise ConfigError(f"config.classification.frozen={section.frozen!r} matches no module; the model's modules "
                          f"are named like {', '.join(modules[:3])}, ..., {modules[-1]}")
    if len(frozen) == len(modules):
        raise ConfigError(f"config.classification.frozen={section.frozen!r} matches every module: nothing would "
                          "train ('backbone' freezes all but the classifier)")


def frozen_batch_norm_pattern(section, classifier: str) -> str | None:
    """The regular expression of the BN layers whose statistics are frozen; None for none."""
    return EVERYTHING if section.freeze_bn_statistics else frozen_pattern(section, classifier)


def module_path(key_path) -> str:
    """"layer1_0/conv1" for the jax key path of layer1_0/conv1/kernel (in params or batch_stats)."""
    return "/".join(str(getattr(k, "key", k)) for k in key_path[:-1])


def is_frozen(pattern: str | None, key_path) -> bool:
    return pattern is not None and re.search(pattern, module_path(key_path)) is not None


def by_part(tx: optax.GradientTransformation, *, frozen: str | None, classifier: str,
            backbone_multiplier: float) -> optax.GradientTransformation:
    """`tx` whose updates are zero for the frozen modules' parameters and scaled by `backbone_multiplier` for
    every other module but the classifier (`tx`'s learning rate times the multiplier, as a PyTorch param group's
    lr). The state is `tx`'s."""
    if frozen is None and backbone_multiplier == 1:
        return tx

    def part(key_path, update):
        if is_frozen(frozen, key_path):
            return jnp.zeros_like(update)  # exactly zero: the parameter keeps its bits
        if module_path(key_path) != classifier and backbone_multiplier != 1:
            return update * jnp.asarray(backbone_multiplier, update.dtype)
        return update

    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        return jax.tree_util.tree_map_with_path(part, updates), state

    return optax.GradientTransformation(tx.init, update)
