"""`jaxnets.load_checkpoint(path) -> (model, variables, config)`: any trainer checkpoint, one device.

    model, variables, config = jaxnets.load_checkpoint("/tmp/run")   # a workdir: its newest good step
    logits = model.apply(variables, images, train=False)
    class_names = jaxnets.read_class_names("/tmp/run")                # ("0", ..., "9"), folder names, ...

`variables` are the eval variables: the parameter EMA when the run kept one, else the parameters, and
the BN statistics (every task's state keeps them under these names: `jaxnets.train.task.State`). The
arrays land on one device (the first CPU device unless `device` is given), whatever the topology that
wrote them: the target sharding is given explicitly, never read from disk.
"""

from __future__ import annotations

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from jaxnets.checkpoints.layout import STATE_ITEM, read_meta, resolve_step_dir, state_structure
from jaxnets.models import create_model_from_config


def restore_variables(step_dir, sharding) -> dict:
    """{"params", "batch_stats", "ema_params" (None without an EMA)} of a step, placed with `sharding` (the rest of
    the state, such as the optimizer's, is not read)."""
    saved = state_structure(step_dir)
    wanted = {k: saved[k] for k in ("params", "batch_stats", "ema_params") if saved.get(k) is not None}
    with ocp.PyTreeCheckpointer() as checkpointer:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), wanted)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        args = ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)
        restored = checkpointer.restore(epath.Path(step_dir) / STATE_ITEM, args=args)
    restored.setdefault("batch_stats", {})
    restored.setdefault("ema_params", None)
    return restored


def load_checkpoint(path, device=None):
    """-> (model, variables, config) for a workdir or one checkpoint step, on one device."""
    step_dir = resolve_step_dir(path)
    meta = read_meta(step_dir)
    config = ml_collections.ConfigDict(tuples_from_json(meta["config"]))
    device = jax.devices("cpu")[0] if device is None else device
    restored = restore_variables(step_dir, jax.sharding.SingleDeviceSharding(device))
    params = restored["params"] if restored["ema_params"] is None else restored["ema_params"]
    model = create_model_from_config(config, meta["num_classes"])
    return model, {"params": params, "batch_stats": restored["batch_stats"]}, config


def read_class_names(path) -> tuple[str, ...]:
    """The class names a checkpoint was trained with (label order), saved beside it; () when the dataset named
    none."""
    return tuple(read_meta(resolve_step_dir(path))["class_names"])


def tuples_from_json(value):
    """JSON lists back to the tuples configs use (stage sizes, decay epochs)."""
    if isinstance(value, dict):
        return {k: tuples_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(tuples_from_json(v) for v in value)
    return value
