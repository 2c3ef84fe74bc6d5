"""Data parallelism: 8 devices train exactly like 1 on the same global batch, and ResNeXt's compiled
step keeps per-device work local (no all-gather), only the all-reduces it asks for."""

import jax
import numpy as np
import optax
import pytest
from helpers import SYNTHETIC_DATASET, random_batches, tiny_resnext_config

from jaxnets.models import create_model_from_config, layers
from jaxnets.train import build_trainer, parallel


def build(config, devices):
    trainer = build_trainer(config, devices=devices, dataset_info=SYNTHETIC_DATASET)
    return trainer, trainer.init_state()


def losses(config, devices, num_steps=4):
    trainer, state = build(config, devices)
    out = []
    for batch in random_batches(num_steps):
        state, metrics = trainer.train_step(state, trainer.shard(batch))
        out.append(float(metrics["loss"]))
    return np.array(out), state


def test_eight_devices_follow_the_one_device_trajectory():
    assert jax.device_count() == 8, "conftest.py sets XLA_FLAGS for 8 CPU devices"
    config = tiny_resnext_config(sync_batch_norm=True)
    one, state_one = losses(config, jax.devices()[:1])
    eight, state_eight = losses(config, jax.devices())
    assert len(set(np.round(one, 3))) > 1, "the loss must move, or the comparison proves nothing"
    np.testing.assert_allclose(eight, one, rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(state_eight.params), jax.device_get(state_one.params))


def test_per_device_batch_norm_differs_from_synchronised():
    per_device, _ = losses(tiny_resnext_config(sync_batch_norm=False), jax.devices(), num_steps=2)
    synchronised, _ = losses(tiny_resnext_config(sync_batch_norm=True), jax.devices(), num_steps=2)
    assert not np.allclose(per_device, synchronised, rtol=1e-4), "sync_batch_norm must change the statistics"


def compiled_step_hlo(config) -> str:
    trainer, state = build(config, jax.devices())
    return trainer.train_step.lower(state, trainer.shard(next(random_batches(1)))).compile().as_text()


# The native grouped convolution ("xla" lowering, what GPUs and TPUs run) is what XLA's SPMD partitioner
# all-gathers; the CPU's lowerings (oneDNN calls, or "decomposed") have no grouped convolution left to trip it.
@pytest.mark.parametrize("sync_batch_norm", [True, False])
@pytest.mark.parametrize("conv_lowering", ["xla", "onednn", "decomposed"])
def test_compiled_resnext_step_has_no_all_gather(sync_batch_norm, conv_lowering):
    hlo = compiled_step_hlo(tiny_resnext_config(sync_batch_norm, conv_lowering))
    assert "all-gather" not in hlo, "the batch would be gathered onto every device"
    assert "all-to-all" not in hlo and "collective-permute" not in hlo
    assert "all-reduce" in hlo  # gradients, BN statistics and metrics


def test_a_batch_sharded_jit_would_all_gather():
    """The reason for shard_map: the same model under a plain batch-sharded jit gathers the batch."""
    config = tiny_resnext_config(conv_lowering="xla")
    model = create_model_from_config(config, num_classes=10)
    mesh = parallel.create_mesh()
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))

    def loss(variables, batch):
        logits, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    # The forward pass already gathers (and compiles in 0.3 s; with the gradient it took 46 s here).
    forward = jax.jit(loss, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)))
    with layers.conv_lowering("xla"):
        hlo = forward.lower(variables, parallel.device_batch(next(random_batches(1)), mesh)).compile().as_text()
    assert "all-gather" in hlo
