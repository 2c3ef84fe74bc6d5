"""ResNet-50 on ImageNet, torchvision's classic recipe (the IMAGENET1K_V1 weights: 76.130% top-1).

    python train.py --config configs/resnet50.py --workdir gs://BUCKET/resnet50

The recipe torchvision trained ResNet-50 and ResNeXt-50 with (configs/resnext50.py), here on ResNet-50: 90 epochs,
batch 256, SGD momentum 0.9, lr 0.1 per 256 images (scaled linearly with the global batch) x0.1 every 30 epochs,
wd 1e-4, random-resized crop 224 + flip, eval resize 256 + center crop 224. ImageNet must be prepared once
(`tfds build imagenet2012 --manual_dir=...`).
"""

from configs import resnext50


def get_config():
    c = resnext50.get_config()
    c.model = "resnet50"
    return c
