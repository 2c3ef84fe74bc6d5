"""The released ENAS macro final model on CIFAR-10 (scripts/cifar10_macro_final.sh of the official code):
the published 24-layer arc, 96 filters, true separable convolutions. The author reports about 96.1%
test accuracy; a reproduction 96.01%; NNI's rerun of the official code 95.68%. (The released code built
ops 1/3 as full convolutions: add --config.model_overrides.separable_as_full_conv=True for that model.)

    python train.py --config configs/enas_macro_final_cifar10.py --workdir /tmp/enas_final

310 epochs, batch 100, SGD Nesterov 0.9, SGDR per epoch 0.05 -> 0.001 (T_0 10, T_mul 2: 5 cycles),
L2 2e-4 in the loss over all parameters, keep_prob 0.5, each gradient tensor clipped to norm 5 (the
official "norm" mode meant per-tensor `clip_by_norm`, but appended the unclipped gradient: a no-op there).
"""

from jaxnets.config import base_config
from jaxnets.models.enas import PUBLISHED_FINAL_ARC


def get_config():
    c = base_config()
    c.model = "enas_macro"
    c.model_overrides.arc = " ".join(PUBLISHED_FINAL_ARC.split())
    c.dataset = "cifar10"
    c.global_batch_size = 100
    c.eval_batch_size = 500
    c.num_epochs = 310
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = True
    c.schedule = "sgdr"
    c.learning_rate = 0.05
    c.min_learning_rate = 0.001
    c.sgdr_t0_epochs = 10
    c.sgdr_t_mul = 2
    c.weight_decay = 2e-4
    c.weight_decay_mode = "l2_loss"
    c.weight_decay_exclude_bn_and_bias = False
    c.grad_clip_per_tensor = 5.0
    return c
