"""The pytorch-cifar100 seed recipe: CIFAR ResNeXt-50 on CIFAR-100 (reported 22.23% top-1 error, best epoch
picked on the test set, so slightly optimistic).

    python train.py --config configs/cifar_resnext50_cifar100.py --workdir /tmp/cifar_resnext50

200 epochs, batch 128, SGD momentum 0.9, lr 0.1 x0.2 at epochs 60/120/160, 1 warm-up epoch, wd 5e-4
(PyTorch SGD weight_decay), pad-4 crop + flip. The seed also rotates
by up to 15 degrees; jaxnets' CIFAR augmentation does not.
"""

from jaxnets.config import base_config


def get_config():
    c = base_config()
    c.model = "cifar_resnext50"
    c.dataset = "cifar100"
    c.global_batch_size = 128
    c.num_epochs = 200
    c.learning_rate = 0.1
    c.schedule = "multistep"
    c.lr_decay_epochs = (60, 120, 160)
    c.lr_decay_factor = 0.2
    c.warmup_epochs = 1.0
    c.weight_decay = 5e-4
    c.weight_decay_mode = "coupled"  # PyTorch's SGD weight_decay: wd * w added to the gradient
    return c
