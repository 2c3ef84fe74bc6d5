"""MobileNetV2 on ImageNet, torchvision's recipe (the V1 weights: 71.878% top-1; paper 72.0%).

    python train.py --config configs/mobilenet_v2.py --workdir gs://BUCKET/mobilenet_v2

300 epochs, batch 256, SGD momentum 0.9, lr 0.045 per 256 images (scaled linearly with the global
batch) decayed x0.98 every epoch, wd 4e-5, random-resized crop 224 + flip.
"""

from jaxnets.config import base_config


def get_config():
    c = base_config()
    c.model = "mobilenet_v2"
    c.dataset = "imagenet2012"
    c.global_batch_size = 256
    c.eval_batch_size = 1000
    c.num_epochs = 300
    c.learning_rate = 0.045  # per 256 images: scaled linearly to global_batch_size when the config is resolved
    c.learning_rate_batch_size = 256
    c.schedule = "staircase"
    c.lr_decay_every_epochs = 1.0
    c.lr_decay_rate = 0.98
    c.weight_decay = 4e-5
    c.weight_decay_mode = "coupled"  # PyTorch's SGD weight_decay: wd * w added to the gradient
    return c
