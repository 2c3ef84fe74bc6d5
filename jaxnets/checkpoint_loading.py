"""`jaxnets.load_checkpoint(path) -> (model, variables, config)`: any trainer checkpoint, one device.

    model, variables, config = jaxnets.load_checkpoint("/tmp/run")   # a workdir: its newest good step
    logits = model.apply(variables, images, train=False)

`variables` are the eval variables: the parameter EMA when the run kept one, else the parameters, and
the BN statistics. The arrays land on one device (the first CPU device unless `device` is given),
whatever the topology that wrote them: the target sharding is given explicitly, never read from disk.
"""

from __future__ import annotations

import json
import os

# The on-disk layout, shared with the trainer (jaxnets.train.checkpoint), which writes it with orbax.
CHECKPOINT_DIR = "checkpoints"  # workdir/checkpoints/<step>/{state,config}/
COMMIT_MARKER = "commit_success.txt"  # orbax writes it last: a step without it never finished


def step_numbers(directory: str) -> list[int]:
    """The steps saved under `directory` (committed or not), ascending; [] when it does not exist."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def resolve_step_dir(path: str) -> str:
    """A step directory (`.../checkpoints/<step>`), or a workdir / its `checkpoints/`: the newest committed step."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(os.path.join(path, "state")):
        return path
    directory = os.path.join(path, CHECKPOINT_DIR)
    directory = directory if os.path.isdir(directory) else path
    steps = [s for s in step_numbers(directory) if os.path.exists(os.path.join(directory, str(s), COMMIT_MARKER))]
    if not steps:
        raise FileNotFoundError(f"no committed checkpoint in {path} (expected <workdir>/{CHECKPOINT_DIR}/<step>/)")
    return os.path.join(directory, str(steps[-1]))


def read_meta(step_dir: str) -> dict:
    """The JSON saved beside the state: {"config": {...}, "num_classes": int, "image_shape": [H, W, C], ...}."""
    with open(os.path.join(step_dir, "config", "metadata")) as f:
        return json.load(f)


def restore_variables(step_dir: str, sharding) -> dict:
    """{"params", "batch_stats", "ema_params"} of a step, placed with `sharding` (the optimizer state is not read)."""
    import jax
    import orbax.checkpoint as ocp

    state_dir = os.path.join(step_dir, "state")
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(state_dir).item_metadata.tree
        wanted = {k: metadata[k] for k in ("params", "batch_stats", "ema_params") if metadata.get(k) is not None}
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), wanted)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        restored = checkpointer.restore(
            state_dir, args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)
        )
    restored.setdefault("batch_stats", {})
    restored.setdefault("ema_params", None)
    return restored


def load_checkpoint(path, device=None):
    """-> (model, variables, config) for a workdir or one checkpoint step, on one device."""
    import jax
    import ml_collections

    from jaxnets.models import create_model_from_config

    step_dir = resolve_step_dir(path)
    meta = read_meta(step_dir)
    config = ml_collections.ConfigDict(_tuples(meta["config"]))
    device = jax.devices("cpu")[0] if device is None else device
    restored = restore_variables(step_dir, jax.sharding.SingleDeviceSharding(device))
    params = restored["params"] if restored["ema_params"] is None else restored["ema_params"]
    model = create_model_from_config(config, meta["num_classes"])
    return model, {"params": params, "batch_stats": restored["batch_stats"]}, config


def _tuples(value):
    """JSON lists back to the tuples configs use (stage sizes, decay epochs)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
