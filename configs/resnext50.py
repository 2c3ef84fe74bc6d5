"""ResNeXt-50 32x4d on ImageNet, torchvision's recipe (the V1 weights: 77.618% top-1).

    python train.py --config configs/resnext50.py --workdir gs://BUCKET/resnext50

90 epochs, SGD momentum 0.9, lr 0.1 per 256 images (scaled linearly with the global batch), x0.1 at
epochs 30 and 60 (torchvision's StepLR(30, 0.1)), wd 1e-4, random-resized crop 224 + flip, eval resize
256 + center crop 224. ImageNet must be prepared once (`tfds build imagenet2012 --manual_dir=...`).
"""

from jaxnets.config import base_config


def get_config():
    c = base_config()
    c.model = "resnext50_32x4d"
    c.dataset = "imagenet2012"
    c.global_batch_size = 256
    c.eval_batch_size = 1000
    c.num_epochs = 90
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.learning_rate = 0.1  # per 256 images: scaled linearly to global_batch_size when the config is resolved
    c.learning_rate_batch_size = 256
    c.schedule = "multistep"
    c.lr_decay_epochs = (30, 60)
    c.lr_decay_factor = 0.1
    c.weight_decay = 1e-4
    c.weight_decay_mode = "coupled"  # PyTorch's SGD weight_decay: wd * w added to the gradient
    c.log_every_steps = 100
    c.eval_every_epochs = 1.0
    return c
