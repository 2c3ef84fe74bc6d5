"""ResNeXt-101 32x8d on ImageNet, torchvision's recipe (the V1 weights: 79.312% top-1).

    python train.py --config configs/resnext101_32x8d.py --workdir gs://BUCKET/resnext101

The ResNeXt-50 recipe (configs/resnext50.py) with the deeper, wider model: 90 epochs, SGD 0.9, lr 0.1 per
256 images x0.1 at epochs 30 and 60, wd 1e-4.
"""

from configs import resnext50


def get_config():
    c = resnext50.get_config()
    c.model = "resnext101_32x8d"
    return c
