"""The paper's ResNeXt-29 8x64d on CIFAR-10 (Xie et al. 2017: 3.65% test error, 34.4M parameters).

    python train.py --config configs/resnext29_cifar10.py --workdir /tmp/resnext29

300 epochs, batch 128, SGD momentum 0.9, lr 0.1 x0.1 at epochs 150 and 225, wd 5e-4, pad-4 crop + flip.
"""

from jaxnets.config import base_config


def get_config():
    c = base_config()
    c.model = "resnext29_8x64d"
    c.dataset = "cifar10"
    c.global_batch_size = 128
    c.num_epochs = 300
    c.learning_rate = 0.1
    c.schedule = "multistep"
    c.lr_decay_epochs = (150, 225)
    c.lr_decay_factor = 0.1
    c.weight_decay = 5e-4
    c.weight_decay_mode = "coupled"  # the Torch code's weight decay: wd * w added to the gradient
    return c
