"""Learning-rate schedules against values computed by hand (or by a formula written out here)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import optim_config

from jaxnets.optim import SCHEDULES, create_schedule, schedules


def lrs(config, steps_per_epoch: int, steps) -> np.ndarray:
    return np.asarray(create_schedule(config, steps_per_epoch)(np.asarray(steps, np.int32)))


# ENAS macro final: lr_max 0.05, lr_min 0.0005 (search) / 0.001 (final), T_0 10, T_mul 2, 310 epochs.
SGDR = {"schedule": "sgdr", "learning_rate": 0.05, "min_learning_rate": 0.0005, "sgdr_t0_epochs": 10, "sgdr_t_mul": 2}
SPE = 3  # steps per epoch: small, so every step of the 310 epochs is evaluated


def sgdr_by_epoch(num_epochs: int = 311) -> np.ndarray:
    lr = lrs(optim_config(**SGDR, num_epochs=310), SPE, np.arange(num_epochs * SPE))
    per_epoch = lr.reshape(num_epochs, SPE)
    np.testing.assert_array_equal(per_epoch, per_epoch[:, :1].repeat(SPE, axis=1))  # constant within an epoch
    return per_epoch[:, 0]


def test_sgdr_restarts_at_epochs_10_30_70_150_and_310_is_five_cycles():
    lr = sgdr_by_epoch()
    restarts = [e for e in range(1, len(lr)) if lr[e] > lr[e - 1]]
    assert restarts == [10, 30, 70, 150, 310]  # epoch 310 would start a 6th cycle: 310 epochs = 5 full ones
    np.testing.assert_array_equal(lr[[0, 10, 30, 70, 150, 310]], np.float32(0.05))  # exactly lr_max
    for start, length in [(0, 10), (10, 20), (30, 40), (70, 80), (150, 160)]:
        assert np.all(np.diff(lr[start : start + length]) < 0), f"not strictly decreasing in cycle at epoch {start}"
        # Half-way through every cycle cos = 0: lr = (0.05 + 0.0005) / 2.
        np.testing.assert_allclose(lr[start + length // 2], 0.02525, rtol=1e-6)


def test_sgdr_values_by_hand():
    lr = sgdr_by_epoch()
    # lr_min + (lr_max - lr_min)/2 * (1 + cos(pi * t/T)), worked out by hand:
    # t=1,T=10: 0.0005 + 0.02475 * (1 + 0.9510565) = 0.0487886; t=9,T=10: 0.0005 + 0.02475 * 0.0489435 = 0.0017114
    # t=19,T=20: 0.0005 + 0.02475 * (1 - 0.9876883) = 0.0008047; t=159,T=160: 0.0005 + 0.02475 * 0.0001928 = 0.0005048
    np.testing.assert_allclose(lr[[1, 9, 29, 309]], [0.04878865, 0.00171135, 0.00080471, 0.00050477], rtol=1e-5)
    assert lr[309] > 0.0005  # lr_min is approached, never reached: the last epoch has t = T - 1


def test_sgdr_t_mul_1_restarts_every_t0_epochs():
    config = optim_config(**{**SGDR, "sgdr_t0_epochs": 4, "sgdr_t_mul": 1})
    lr = lrs(config, 1, np.arange(12))
    expected = [0.0005 + 0.02475 * (1 + math.cos(math.pi * (e % 4) / 4)) for e in range(12)]
    np.testing.assert_allclose(lr, expected, rtol=1e-6)


def test_staircase_enas_semantics_around_the_boundaries():
    # lr_init * rate^floor(max(step - start, 0) / every): start 100, every 50, rate 0.5.
    fields = {"schedule": "staircase", "lr_decay_start_steps": 100, "lr_decay_every_steps": 50, "lr_decay_rate": 0.5}
    config = optim_config(**fields)
    steps = [0, 99, 100, 149, 150, 199, 200, 249, 250]
    expected = [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]
    np.testing.assert_allclose(lrs(config, 7, steps), expected, rtol=1e-6)
    # min_learning_rate is ENAS's lr_dec_min floor.
    floored = lrs(optim_config(**fields, min_learning_rate=0.02), 7, steps)
    np.testing.assert_allclose(floored, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02], rtol=1e-6)


def test_staircase_interval_in_epochs_follows_the_steps_per_epoch():
    # torchvision's MobileNetV2 recipe: x0.98 once per epoch, whatever the batch size makes an epoch.
    config = optim_config(schedule="staircase", lr_decay_every_epochs=1.0, lr_decay_rate=0.98)
    for steps_per_epoch in (7, 13):
        steps = [0, steps_per_epoch - 1, steps_per_epoch, 3 * steps_per_epoch]
        np.testing.assert_allclose(lrs(config, steps_per_epoch, steps), [0.1, 0.1, 0.098, 0.1 * 0.98**3], rtol=1e-6)


def test_multistep_seed_recipe_with_one_warmup_epoch():
    # 200 epochs, lr 0.1 x0.2 at epochs 60/120/160, 1 warm-up epoch; 10 steps per epoch.
    config = optim_config(schedule="multistep", lr_decay_epochs=(60, 120, 160), lr_decay_factor=0.2, warmup_epochs=1.0)
    steps = [0, 1, 5, 9, 10, 599, 600, 1199, 1200, 1599, 1600, 1999]
    expected = [0.0, 0.01, 0.05, 0.09, 0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008]
    np.testing.assert_allclose(lrs(config, 10, steps), expected, rtol=1e-6)


def test_cosine_with_warmup_peaks_after_warmup_and_ends_at_min():
    # 2 warm-up epochs of 5 steps, then cosine from 0.1 to 0.001 over the remaining 40 steps of 10 epochs.
    fields = {"schedule": "cosine", "num_epochs": 10, "warmup_epochs": 2.0, "min_learning_rate": 0.001}
    config = optim_config(**fields)
    steps = [0, 5, 10, 20, 30, 50, 60]
    # step 20: a quarter into the decay, 0.001 + 0.0495 * (1 + cos(pi/4)) = 0.0855018; step 30: the midpoint.
    expected = [0.0, 0.05, 0.1, 0.0855018, 0.0505, 0.001, 0.001]
    np.testing.assert_allclose(lrs(config, 5, steps), expected, rtol=1e-5)
    assert lrs(config, 5, [10])[0] == np.float32(0.1)  # the peak, exactly
    # Capping the run (a smoke test) must not move the horizon: num_epochs sets it, not num_train_steps.
    np.testing.assert_array_equal(lrs(optim_config(**fields, num_train_steps=3), 5, steps), lrs(config, 5, steps))


def test_constant_with_fractional_warmup():
    config = optim_config(schedule="constant", warmup_epochs=0.5)  # 0.5 * 8 = 4 warm-up steps
    np.testing.assert_allclose(lrs(config, 8, [0, 1, 2, 3, 4, 100]), [0.0, 0.025, 0.05, 0.075, 0.1, 0.1], rtol=1e-6)


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_is_float32_and_jit_safe(name):
    config = optim_config(schedule=name, lr_decay_epochs=(2,), warmup_epochs=0.0 if name == "sgdr" else 1.0)
    schedule = create_schedule(config, 4)
    steps = np.arange(0, 40, 3, dtype=np.int32)
    eager = np.asarray(schedule(steps))
    jitted_schedule = jax.jit(schedule)
    jitted = np.array([jitted_schedule(jnp.int32(s)) for s in steps])
    assert schedule(jnp.int32(5)).dtype == jnp.float32 and schedule(jnp.int32(5)).shape == ()
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-8)  # XLA may fuse differently under jit


# Each schedule against the PyTorch scheduler it claims to equal, stepped once per training step (SGDR: once per
# epoch, as ENAS steps it), over a whole run of 1,000 steps: 50 epochs of 20 steps.
RUN_STEPS, RUN_SPE = 1000, 20


def pytorch_learning_rates(make_scheduler, peak: float, per_epoch: bool = False) -> np.ndarray:
    """The learning rate of each of RUN_STEPS steps under a torch.optim.lr_scheduler (float64, Python)."""
    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    scheduler = make_scheduler(optimizer)
    values = []
    for step in range(RUN_STEPS):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if not per_epoch or (step + 1) % RUN_SPE == 0:
            scheduler.step()
    return np.asarray(values)


def torch_schedulers():
    from torch.optim import lr_scheduler as S

    warmup = 5 * RUN_SPE  # 5 epochs; jaxnets' warm-up starts at 0, which LinearLR (start_factor > 0) cannot

    def warm(optimizer, then):
        return S.SequentialLR(optimizer, [S.LambdaLR(optimizer, lambda s: s / warmup), then], milestones=[warmup])

    return {
        "cosine": ({"schedule": "cosine", "learning_rate": 0.1, "min_learning_rate": 1e-4, "warmup_epochs": 5.0},
                   lambda o: warm(o, S.CosineAnnealingLR(o, T_max=RUN_STEPS - warmup, eta_min=1e-4)), False),
        "multistep": ({"schedule": "multistep", "learning_rate": 0.1, "lr_decay_epochs": (15, 30, 45),
                       "lr_decay_factor": 0.2, "warmup_epochs": 5.0},  # milestones absolute: shifted past the warm-up
                      lambda o: warm(o, S.MultiStepLR(o, [15 * RUN_SPE - warmup, 30 * RUN_SPE - warmup,
                                                          45 * RUN_SPE - warmup], gamma=0.2)), False),
        "staircase (StepLR)": ({"schedule": "staircase", "learning_rate": 0.1, "lr_decay_every_epochs": 12.0,
                                "lr_decay_rate": 0.5}, lambda o: S.StepLR(o, step_size=12 * RUN_SPE, gamma=0.5), False),
        "sgdr": ({"schedule": "sgdr", "learning_rate": 0.05, "min_learning_rate": 5e-4, "sgdr_t0_epochs": 5,
                  "sgdr_t_mul": 2}, lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=5e-4), True),
        "constant": ({"schedule": "constant", "learning_rate": 0.1, "warmup_epochs": 5.0},
                     lambda o: warm(o, S.ConstantLR(o, factor=1.0, total_iters=0)), False),
    }


@pytest.mark.parametrize("name", ["cosine", "multistep", "staircase (StepLR)", "sgdr", "constant"])
def test_each_schedule_equals_its_pytorch_scheduler_over_a_whole_run(name):
    fields, make_scheduler, per_epoch = torch_schedulers()[name]
    ours = lrs(optim_config(**fields, num_epochs=RUN_STEPS // RUN_SPE), RUN_SPE, np.arange(RUN_STEPS))
    expected = pytorch_learning_rates(make_scheduler, fields["learning_rate"], per_epoch)
    # Every rate is PyTorch's rounded to float32 (6e-8 of itself at most), as PyTorch's float32 kernels read it.
    np.testing.assert_array_equal(ours, expected.astype(np.float32), err_msg=name)
    np.testing.assert_allclose(ours, expected, rtol=1e-7, atol=0, err_msg=name)


@pytest.mark.parametrize("name", ["cosine", "sgdr", "constant"])
def test_curves_longer_than_a_table_are_computed_in_float32_within_4e_7(name, monkeypatch):
    monkeypatch.setattr(schedules, "MAX_TABLE", 10)  # (every curve here is longer: 800 steps, 75 epochs, 100 steps)
    fields, make_scheduler, per_epoch = torch_schedulers()[name]
    ours = lrs(optim_config(**fields, num_epochs=RUN_STEPS // RUN_SPE), RUN_SPE, np.arange(RUN_STEPS))
    expected = pytorch_learning_rates(make_scheduler, fields["learning_rate"], per_epoch)
    # float32 rounds a rate to 6e-8 and sin() adds a few units in the last place (measured: 3.4e-7 at most).
    np.testing.assert_allclose(ours, expected, rtol=4e-7, atol=0, err_msg=name)
    assert not np.array_equal(ours, expected.astype(np.float32)), "the float32 path, not a table"


def test_staircase_with_a_start_and_a_floor_is_the_official_enas_formula():
    """ENAS's `lr = max(lr_init * rate ** floor(max(step - start, 0) / every), lr_dec_min)` over 1,000 steps."""
    fields = {"schedule": "staircase", "learning_rate": 0.1, "lr_decay_start_steps": 100, "lr_decay_every_steps": 70,
              "lr_decay_rate": 0.6, "min_learning_rate": 1e-3}
    ours = lrs(optim_config(**fields, num_epochs=RUN_STEPS // RUN_SPE), RUN_SPE, np.arange(RUN_STEPS))
    expected = [max(0.1 * 0.6 ** math.floor(max(step - 100, 0) / 70), 1e-3) for step in range(RUN_STEPS)]
    np.testing.assert_allclose(ours, expected, rtol=1e-7, atol=0)
