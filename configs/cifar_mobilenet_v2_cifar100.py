"""The pytorch-cifar100 seed recipe for its CIFAR MobileNetV2 (reported 31.92% top-1 error on CIFAR-100).

    python train.py --config configs/cifar_mobilenet_v2_cifar100.py --workdir /tmp/cifar_mobilenet_v2

The seed's one recipe for every network: 200 epochs, batch 128, SGD 0.9, lr 0.1 x0.2 at epochs
60/120/160, 1 warm-up epoch, wd 5e-4 (PyTorch weight_decay), pad-4 crop + flip.
"""

from jaxnets.train import base_config


def get_config():
    c = base_config()
    c.model = "cifar_mobilenet_v2"
    c.dataset = "cifar100"
    c.image_size = 32
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
