"""`base_config(task)`: the fields of a run, for recipes (configs/*.py) to start from.

    c = base_config()            # classification (every recipe but the ENAS search's)
    c = base_config("search")    # the ENAS search: adds its section, config.search

The engine's fields and their defaults are in `jaxnets.train.config`; a task's section and its defaults are
the task's own (`register_task(..., config_section=...)`). Importing this module registers the built-in tasks.
"""

from __future__ import annotations

import ml_collections

import jaxnets.tasks  # noqa: F401  (registers the built-in tasks)
from jaxnets.train import engine_config, get_task


def base_config(task: str = "classification") -> ml_collections.ConfigDict:
    c = engine_config()
    c.task = task
    spec = get_task(task)
    if spec.config_section is not None:
        c[task] = spec.config_section()
    return c
