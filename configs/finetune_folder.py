"""Fine-tune an ImageNet-pretrained ResNeXt-50 on your own images, as torchvision's transfer-learning practice does.

    python train.py --config configs/finetune_folder.py --workdir runs/photos \\
        --config.dataset=folder:/path/to/photos --config.init_from=resnext50_32x4d.pth

The folder holds train/<class>/*.jpg|png and test/<class>/* (docs/own_images.md); the weights are torchvision's
state dict (.pth, or .safetensors) or timm's, of the model named here (another one: `--config.model=mobilenet_v2`
with its file). The classifier starts afresh for the folder's classes, everything else from the file; the run's
first lines say what was loaded. 224 px with torchvision's training augmentation (a random-resized crop and a
flip) and evaluation (the shorter side to 256, the central 224x224: `eval_crop="centre"`), batch 32, SGD with
momentum 0.9 for 15 epochs on a cosine: the new classifier at lr 0.01 and the pretrained layers at a tenth of it
(torchvision's tutorial fine-tunes at 0.001), weight decay 1e-4, the best evaluation kept. A linear probe (only
the classifier trains; the rest, BN statistics included, keeps its bits) is
`--config.classification.frozen=backbone`; with few images a batch, add
`--config.classification.freeze_bn_statistics=True`.
"""

from jaxnets.config import base_config


def get_config():
    c = base_config()
    c.model = "resnext50_32x4d"
    c.dataset = "folder:/path/to/your/images"  # replace on the command line: --config.dataset=folder:DIR
    c.image_size = 224
    c.augmentation.crop = "random_resized"  # and a flip, as torchvision's (drawn on the image resized to 224)
    c.eval_crop = "centre"  # torchvision's Resize(256) + CenterCrop(224)
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 15
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.learning_rate = 0.01  # the new classifier's; the pretrained layers train at 0.1x
    c.classification.backbone_lr_multiplier = 0.1
    c.schedule = "cosine"
    c.weight_decay = 1e-4
    c.weight_decay_mode = "coupled"  # PyTorch's SGD weight_decay
    c.log_every_steps = 10
    c.eval_every_epochs = 1.0
    c.keep_best = True
    return c
