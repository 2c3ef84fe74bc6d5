"""The released ENAS macro search on CIFAR-10 (scripts/cifar10_macro_search.sh of the official code).

    python train.py --config configs/enas_macro_search.py --workdir /tmp/enas_search
    python train.py --config /tmp/enas_search/final_config.py --workdir /tmp/enas_search_final

The shared network: 12 layers, 36 filters, 6 ops; batch 128, 310 epochs, SGD Nesterov 0.9, SGDR per epoch
0.05 -> 0.0005 (T_0 10, T_mul 2), L2 2.5e-4 in the loss over all parameters, keep_prob 0.9, each gradient
tensor clipped to norm 5. It trains on the first 45,000 training images; the controller's rewards and the
final pick come from the last 5,000 (never the test set). The controller: REINFORCE with the released flags
(the defaults of config.search.controller_*): 50 updates after each epoch, 20 arcs each, Adam(0, 0.999, 1e-3)
at 1e-3, tanh constant 1.5, entropy weight 1e-4, skip target 0.4 with weight 0.8, baseline decay 0.99.

The found arc is then trained from scratch by WORKDIR/final_config.py with the released final model's
settings (configs/enas_macro_final_cifar10.py) at 96 filters and the searched depth.
"""

import ml_collections

from jaxnets.config import base_config


def get_config():
    c = base_config("search")
    c.model = "enas_macro_shared"  # 12 layers, 36 filters, 6 branches, keep_prob 0.9 (the registry's defaults)
    c.dataset = "cifar10"
    c.global_batch_size = 128
    c.eval_batch_size = 500
    c.num_epochs = 310
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = True
    c.schedule = "sgdr"
    c.learning_rate = 0.05
    c.min_learning_rate = 0.0005
    c.sgdr_t0_epochs = 10
    c.sgdr_t_mul = 2
    c.weight_decay = 2.5e-4
    c.weight_decay_mode = "l2_loss"
    c.grad_clip_per_tensor = 5.0
    c.eval_every_epochs = 1.0
    c.search.eval_arcs = 10
    c.search.final_arcs = 100

    c.search.final = ml_collections.ConfigDict(dict(
        global_batch_size=100, eval_batch_size=500, num_epochs=310, optimizer="sgd", momentum=0.9, nesterov=True,
        schedule="sgdr", learning_rate=0.05, min_learning_rate=0.001, sgdr_t0_epochs=10, sgdr_t_mul=2,
        weight_decay=2e-4, weight_decay_mode="l2_loss", grad_clip_per_tensor=5.0,
        model_overrides=dict(num_filters=96, keep_prob=0.5),
    ))
    return c
