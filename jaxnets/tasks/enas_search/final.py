"""What a finished search leaves in its workdir for the next step: the found arc and the recipe that trains it.

    final_arc.txt     the arc in the official format (one layer per line), for jaxnets or the official code
    final_config.py   a recipe for train.py that trains that arc from scratch as a fixed network:
                          python train.py --config WORKDIR/final_config.py --workdir WORKDIR2

The recipe is written out in full, so it reads on its own and keeps working if the search's recipe changes:
the search's data fields that differ from base_config(), its depth and width, `model = "enas_macro"` with the
arc, and the training settings of the search config's `search.final` block. The final network is trained by
the classification task.
"""

from __future__ import annotations

import runpy

import ml_collections
from etils import epath

from jaxnets.checkpoints import read_meta, resolve_step_dir
from jaxnets.data import dataset_spec
from jaxnets.errors import ConfigError
from jaxnets.models import create_model_from_config
from jaxnets.train import engine_config, get_task

FINAL_ARC_FILE = "final_arc.txt"
FINAL_CONFIG_FILE = "final_config.py"

# Fields of a search that describe the data the found arc is trained on, copied into the recipe; the splits are
# not (the final network trains on the whole training split and is tested on the test split).
_DATA_FIELDS = ("dataset", "data_dir", "image_size", "eval_crop", "seed", "dtype")
_SOUND_SECTION = "audio"  # (and of config.audio, the fields that differ from its defaults)


def _final_base() -> ml_collections.ConfigDict:
    """What `jaxnets.config.base_config()` returns: the engine's fields and the section of classification, the
    task that trains the final network."""
    c = engine_config()
    c.task = "classification"
    section = get_task(c.task).config_section
    if section is not None:
        c[c.task] = section()
    return c


def final_config_fields(search_config, model) -> tuple[dict, dict]:
    """-> (top-level fields, model_overrides) of the recipe, without the arc."""
    base = _final_base()
    final = search_config.search.final.to_dict()
    overrides = {"num_layers": model.num_layers, "num_branches": model.num_branches,
                 "num_filters": model.num_filters, "whole_channels": model.whole_channels}
    overrides.update(final.pop("model_overrides", {}))
    fields = {"model": "enas_macro"}
    fields.update({name: search_config[name] for name in _DATA_FIELDS if search_config[name] != base[name]})
    sound = {name: value for name, value in search_config[_SOUND_SECTION].items()
             if value != base[_SOUND_SECTION][name]}
    sound.update(final.pop(_SOUND_SECTION, None) or {})  # the final training's own audio fields on top
    if sound:
        fields[_SOUND_SECTION] = sound
    fields.update(final)
    unknown = sorted(set(fields) - set(base.keys()))
    if unknown:
        raise ConfigError(f"config.search.final: unknown field(s) {', '.join(unknown)} (the fields of "
                          "base_config())")
    return fields, overrides


def final_config(search_config, model, arc_line: str) -> ml_collections.ConfigDict:
    """The recipe as a config (what final_config.py's get_config() returns), e.g. to check it before a search."""
    fields, overrides = final_config_fields(search_config, model)
    c = _final_base()
    for name, value in fields.items():
        if name == _SOUND_SECTION:
            c[name].update(value)
        else:
            c[name] = value
    c.model_overrides.arc = arc_line
    for name, value in overrides.items():
        c.model_overrides[name] = value
    return c


def final_config_source(search_config, model, arc_line: str, workdir: str, accuracy: float) -> str:
    """The text of final_config.py."""
    fields, overrides = final_config_fields(search_config, model)
    lines = [
        f'"""Trains the arc that the ENAS search in {workdir} found, from scratch, as a fixed network.',
        "",
        f"Written by the search (its held-out accuracy through the shared weights: {accuracy:.4f}).",
        "",
        f"    python train.py --config {workdir}/final_config.py --workdir FINAL_WORKDIR",
        '"""',
        "",
        "from jaxnets.config import base_config",
        "",
        f"ARC = {arc_line!r}",
        "",
        "",
        "def get_config():",
        "    c = base_config()",
    ]
    for name, value in fields.items():
        if name == _SOUND_SECTION:
            lines += [f"    c.{name}.{field} = {_literal(v)}" for field, v in value.items()]
        else:
            lines.append(f"    c.{name} = {_literal(value)}")
    lines.append("    c.model_overrides.arc = ARC")
    lines += [f"    c.model_overrides.{name} = {_literal(value)}" for name, value in overrides.items()]
    lines += ["    return c", ""]
    return "\n".join(lines)


def _literal(value):
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def load_final_model(search_workdir):
    """(model, image_shape): the fixed network that a finished search's final_config.py trains (its arc, depth and
    width), built from that recipe, and the (H, W, C) of its input: to draw it (`jaxnets.plots.enas_architecture`)
    or look at it before training it."""
    recipe = epath.Path(search_workdir) / FINAL_CONFIG_FILE
    if not recipe.exists():
        raise FileNotFoundError(f"{recipe} does not exist: the search in {search_workdir} has not finished")
    config = runpy.run_path(str(recipe))["get_config"]()
    spec = dataset_spec(config.dataset)
    if spec.num_classes and (config.image_size or spec.image_size):
        size = config.image_size or spec.image_size
        num_classes, image_shape = spec.num_classes, (size, size, spec.channels)
    else:  # a folder (or sound, whose input config.audio sizes): the search's checkpoint knows what it trained on
        meta = read_meta(resolve_step_dir(search_workdir))
        num_classes, image_shape = meta["num_classes"], tuple(meta["image_shape"])
    return create_model_from_config(config, num_classes), image_shape
