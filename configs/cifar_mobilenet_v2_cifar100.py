"""The pytorch-cifar100 seed recipe for its CIFAR MobileNetV2 (reported 31.92% top-1 error on CIFAR-100).

    python train.py --config configs/cifar_mobilenet_v2_cifar100.py --workdir /tmp/cifar_mobilenet_v2

The seed's one recipe for every network (configs/cifar_resnext50_cifar100.py): 200 epochs, batch 128,
SGD 0.9, lr 0.1 x0.2 at epochs 60/120/160, 1 warm-up epoch, wd 5e-4 (PyTorch weight_decay).
"""

from configs import cifar_resnext50_cifar100


def get_config():
    c = cifar_resnext50_cifar100.get_config()
    c.model = "cifar_mobilenet_v2"
    return c
