"""A training step equals PyTorch's: jaxnets' own train step (build_trainer) against the same step of each family's
PyTorch twin (tests/torch_twins), from the same weights, on the same batch, in train mode.

SGD with momentum 0.9 (plain and Nesterov), PyTorch's coupled weight decay on every parameter, label smoothing 0.1,
as `torch.optim.SGD` + `nn.CrossEntropyLoss(label_smoothing=0.1)`. Judged against the twin's step in float64: the
loss within 1e-5 relative, every BatchNorm running statistic within 1e-5 (PyTorch moves the running variance towards
the unbiased batch variance: n / (n - 1) times the biased one, 3% at n = 32), and each parameter's update as close to
the float64 update as PyTorch's own float32 step is. On 8 devices the statistics are synchronised, so the step equals
PyTorch's on the whole batch. Networks of one block per stage (every kind of layer of the family, shallow enough to
compile in seconds); no dropout (the two frameworks draw different masks).

Kept small for a second reason: a ReLU whose input lies within float32 round-off of 0 passes its gradient in one
float32 program and not in another, which moves every update below it by a fixed amount. Measured on ResNeXt-29 at
16x16 (128 channels a group of layers, 500k activations a layer) with this batch: the stem's and layer 1's updates
1.7e-3 off the float64 step with oneDNN's convolutions, 1e-6 with XLA's, and 1e-6 with oneDNN on two other batches;
every other float32 program there, PyTorch's included, agreed with float64. At 8x8 no activation is that close.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import traverse_util
from helpers import base_config
from parity import TRAINING_FAMILIES, randomise_batch_norm
from torch_twins import cifar_mobilenetv2, enas, resnet

from jaxnets.convert.torchvision import convert_state_dict
from jaxnets.data import DatasetInfo
from jaxnets.models.normalization import BatchNorm
from jaxnets.train import build_trainer, parallel

BATCH, NUM_CLASSES = 16, 10
LEARNING_RATE, WEIGHT_DECAY, LABEL_SMOOTHING = 0.1, 5e-4, 0.1

def to_jaxnets(name, twin, overrides) -> dict:
    if name == "enas_macro":
        return enas.to_flax_variables(twin.state_dict())
    if name == "cifar_mobilenet_v2":  # (no torchvision names to convert from: the seed's own)
        return cifar_mobilenetv2.to_flax_variables(twin)
    return convert_state_dict(name, twin.state_dict(), **overrides)


def torch_steps(twin, batches, *, nesterov: bool, dtype, learning_rate=LEARNING_RATE, label_smoothing=LABEL_SMOOTHING):
    """(losses, the twin after one SGD step per batch) in `dtype`."""
    model = copy.deepcopy(twin).to(dtype).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9, nesterov=nesterov,
                                weight_decay=WEIGHT_DECAY)
    losses = []
    for images, labels in batches:
        x = torch.from_numpy(images.transpose(0, 3, 1, 2)).to(dtype)
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels).long(),
                                                 label_smoothing=label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, model.float()


def jaxnets_steps(name, overrides, size, variables, batches, *, nesterov: bool, devices,
                  learning_rate=LEARNING_RATE, label_smoothing=LABEL_SMOOTHING):
    """(losses, variables after one step of jaxnets' own train step per batch, on `devices`)."""
    config = base_config()
    config.task, config.model, config.image_size = "classification", name, size
    for key, value in overrides.items():
        config.model_overrides[key] = value
    config.update(global_batch_size=len(batches[0][1]), eval_batch_size=len(batches[0][1]), num_epochs=1,
                  schedule="constant", learning_rate=learning_rate, momentum=0.9, nesterov=nesterov,
                  weight_decay=WEIGHT_DECAY, weight_decay_mode="coupled", label_smoothing=label_smoothing)
    dataset = DatasetInfo(num_classes=NUM_CLASSES, image_shape=(size, size, 3),
                          num_train_examples=100 * len(batches[0][1]), num_eval_examples=len(batches[0][1]))
    trainer = build_trainer(config, devices=devices, dataset_info=dataset)
    loaded = jax.device_put(variables, parallel.replicated(trainer.mesh))
    # A fresh state is zeros but for the model's variables (step 0, no momentum yet): built so, not by compiling
    # the state's initialisation only to replace its parameters.
    zeros = jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding), trainer.abstract_state())
    state = zeros.with_model_variables(params=loaded["params"], batch_stats=loaded["batch_stats"])
    losses = []
    for images, labels in batches:
        state, metrics = trainer.train_step(state, trainer.shard({"image": images, "label": labels}))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def flat(tree) -> dict:
    return {"/".join(path): np.asarray(leaf, np.float64) for path, leaf in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("name", list(TRAINING_FAMILIES))
def test_one_training_step_equals_pytorchs(name, devices):
    build_twin, overrides, size = TRAINING_FAMILIES[name]
    torch.manual_seed(0)
    twin = build_twin(num_classes=NUM_CLASSES)
    randomise_batch_norm(twin, seed=1)
    rng = np.random.default_rng(2)
    images = rng.standard_normal((BATCH, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)
    nesterov = devices == 8  # (both momentum forms, each on one of the topologies)

    variables = to_jaxnets(name, twin, overrides)
    before = flat(variables)
    batches = [(images, labels)]
    (loss64,), after64 = torch_steps(twin, batches, nesterov=nesterov, dtype=torch.float64)
    _, after32 = torch_steps(twin, batches, nesterov=nesterov, dtype=torch.float32)
    expected64, expected32 = flat(to_jaxnets(name, after64, overrides)), flat(to_jaxnets(name, after32, overrides))
    (loss,), got = jaxnets_steps(name, overrides, size, variables, batches, nesterov=nesterov,
                                 devices=jax.devices()[:devices])
    got = flat(got)

    np.testing.assert_allclose(loss, loss64, rtol=1e-5, err_msg="loss")
    assert got.keys() == expected64.keys()
    for path in got:
        if path.startswith("batch_stats/"):
            np.testing.assert_allclose(got[path], expected64[path], rtol=1e-5,
                                       atol=1e-5 * np.abs(expected64[path]).max(),
                                       err_msg=f"{name}: running statistic {path}")
            continue
        update, update64 = got[path] - before[path], expected64[path] - before[path]
        error, torch_error = np.linalg.norm(update - update64), np.linalg.norm(expected32[path] - expected64[path])
        # As close as PyTorch's own float32 step, give or take the rounding of the float32 parameters that the
        # update is read from (after - before: one unit in the last place of each, where PyTorch's step may land
        # exactly on the float64 result). Measured on a Zen 3 over the 848 tensors of these 14 steps: error /
        # (torch_error + rounding) median 0.07, at most 0.91 with oneDNN's convolutions and 0.94 with the
        # decomposed lowering; 2 leaves room for other CPUs' round-off.
        rounding = 2 * np.finfo(np.float32).eps * np.linalg.norm(before[path])
        assert error <= 2 * (torch_error + rounding), (
            f"{name}: {path}'s update is {error:.3g} off PyTorch's float64 step (its float32 step: "
            f"{torch_error:.3g}, of an update of {np.linalg.norm(update64):.3g})")


def test_batch_norm_keeps_flax_batch_norms_variables():
    """Checkpoints written with Flax's nn.BatchNorm (before jaxnets' own) load: the same names, shapes, dtypes."""
    x = jnp.ones((2, 3, 3, 5))
    for train in (False, True):
        ours = BatchNorm(use_running_average=not train).init(jax.random.key(0), x)
        flax = nn.BatchNorm(use_running_average=not train).init(jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax)
        assert jax.tree.map(lambda a: a.dtype, ours) == jax.tree.map(lambda a: a.dtype, flax)


def test_batch_norms_backward_keeps_no_centred_copy_of_its_input():
    """The gradient of 1x1 conv (a matmul) -> BN -> ReLU -> 1x1 conv keeps the BN's input and not also `x - mean`
    (which normalising as `(x - mean) * mul + bias` made autodiff keep): XLA's scratch for it is one such tensor
    below that formula's, which is otherwise the same computation."""

    class Centred(BatchNorm):  # the formula BatchNorm used before, on the same variables
        @nn.compact
        def __call__(self, x):
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.maximum(0.0, jnp.square(x).mean(axes) - jnp.square(mean))
            scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
            bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
            mul = jax.lax.rsqrt(var + self.epsilon) * scale
            return (x - mean.reshape(1, 1, 1, -1)) * mul.reshape(1, 1, 1, -1) + bias.reshape(1, 1, 1, -1)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 64)), jnp.float32)  # 2 MiB
    kernels = [jnp.full((64, 64), 0.01, jnp.float32)] * 2

    def scratch_bytes(norm):
        def loss(params, kernels):
            y = norm.apply(params, x @ kernels[0], mutable=["batch_stats"])[0]
            return jnp.sum(jax.nn.relu(y) @ kernels[1])
        params = norm.init(jax.random.key(0), x)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, kernels).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    ours, centred = scratch_bytes(BatchNorm(use_running_average=False)), scratch_bytes(Centred(False))
    assert ours <= centred - 0.9 * x.size * 4, (ours, centred)  # (a few per-channel vectors differ too)


def round_off_envelope(twin, steps, runs: int = 4, perturbation: float = 1e-6, **sgd) -> np.ndarray:
    """How far round-off can move this run's losses, step by step: the largest relative distance from the float64
    run of `runs` float64 runs whose initial weights are perturbed by `perturbation` relative (ten times float32's
    rounding), as a running maximum (once a run has left, it does not come back)."""
    reference = np.asarray(torch_steps(twin, steps, dtype=torch.float64, **sgd)[0])
    distances = []
    for seed in range(runs):
        perturbed = copy.deepcopy(twin).double()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for weights in perturbed.parameters():
                weights.mul_(1 + perturbation * torch.randn(weights.shape, generator=generator, dtype=torch.float64))
        losses = np.asarray(torch_steps(perturbed, steps, dtype=torch.float64, **sgd)[0])
        distances.append(np.abs(losses - reference) / reference)
    return np.maximum.accumulate(np.max(distances, axis=0))


def test_the_quickstart_network_trains_20_steps_as_its_twin_does():
    """The quickstart's ResNeXt (one block per stage, 4 groups of 16) and its twin from the same weights, on the
    same 5 batches in turn (random images, labels that a linear rule on them gives: learnable), SGD with Nesterov
    momentum at 0.01: the losses equal step by step, as far as round-off lets any float32 run equal another.

    Training amplifies round-off, and by jumps: a ReLU input within round-off of 0 passes its gradient in one
    program and not in another, and which one does depends on the CPU's kernels (on a Zen 3 PyTorch's float32 run
    of these batches stayed within 2.4e-7 of its float64 run for 20 steps; on an AVX-512 Xeon it left by 2.5e-2
    at step 4, where jaxnets' stayed within 1.7e-7). So the bound is measured on the run itself: 1e-5 plus three
    times how far perturbing the initial weights by 1e-6 moves the float64 run by each step (at most 5e-5 over the
    first three steps, where a wrong update rule shows; 3e-2 by the last). PyTorch's own float32 run is held to the
    same bound, which is what makes it fair."""
    name, size = "resnext29_8x64d", 8
    overrides = {"stage_sizes": (1, 1, 1), "stage_planes": (16, 32, 64), "groups": 4, "width_per_group": 16}
    torch.manual_seed(0)
    twin = resnet.ResNet(resnet.Bottleneck, [1, 1, 1], groups=4, width_per_group=16, stage_planes=(16, 32, 64),
                         stem="cifar", num_classes=NUM_CLASSES)
    rng = np.random.default_rng(3)
    rule = rng.standard_normal((size * size * 3, NUM_CLASSES)).astype(np.float32)
    batches = []
    for _ in range(5):
        images = rng.standard_normal((BATCH, size, size, 3), dtype=np.float32)
        batches.append((images, np.argmax(images.reshape(BATCH, -1) @ rule, axis=1).astype(np.int32)))
    steps = batches * 4
    sgd = {"nesterov": True, "learning_rate": 0.01, "label_smoothing": 0.0}
    expected = np.asarray(torch_steps(twin, steps, dtype=torch.float64, **sgd)[0])
    assert expected[-1] < 0.7 * expected[0], f"the twin must learn, or equal losses prove little: {expected}"
    bound = 1e-5 + 3 * round_off_envelope(twin, steps, **sgd)
    assert np.all(bound[:3] < 2e-4), f"a run this sensitive tells no update rule from another: {bound}"
    float32 = np.asarray(torch_steps(twin, steps, dtype=torch.float32, **sgd)[0])
    got = np.asarray(jaxnets_steps(name, overrides, size, to_jaxnets(name, twin, overrides), steps,
                                   devices=jax.devices()[:1], **sgd)[0])
    for program, losses in (("PyTorch float32", float32), ("jaxnets", got)):
        distance = np.abs(losses - expected) / expected
        assert np.all(distance <= bound), (program, distance.tolist(), bound.tolist())
