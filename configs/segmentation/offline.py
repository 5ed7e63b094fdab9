"""Offline segmentation: Mobile DeepLabv3 on the MNIST-digits-on-photos dataset (`mnist_seg_offline`).

    mnv2 train --config configs/segmentation/offline.py --workdir runs/seg_offline

MobileNetV2 0.5 at output stride 16 with the DeepLabv3 head (image pooling + 1x1, no ASPP), trained
from scratch on the 4,000 train canvases (128 x 128, 11 classes: background + 10 digits) with
DeepLab's random scale 0.5-2.0, crop and flip, evaluated on the 500 held-out canvases (other digits,
other photos) by mIOU over the 11 classes. Argument string (all optional):
`configs/segmentation/offline.py:width=0.5,resolution=128,output_stride=16,steps=3000,batch=16,seed=0`.

What differs from the `deeplab` recipe (`configs/segmentation/voc.py`), and why: there are no
ImageNet weights offline, so the network trains from scratch, at a higher learning rate (0.05 for
batch 16) and with batch-norm decay 0.9 in the backbone and 0.99 in the head (a few thousand steps
are too few for DeepLab's 0.997 / 0.9997 averages to follow the weights).
"""

from mnv2_jax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, width=0.35, crop=64, output_stride=8, steps=1500, batch=16, seed=0)
    c = base_config()
    c.task = "segmentation"
    c.width = args.width
    c.resolution = 128  # the canvases' size: eval runs on whole canvases
    c.segmentation.crop_size = args.crop
    c.output_stride = args.output_stride
    c.dataset = "mnist_seg_offline"
    c.train_split = "train"
    c.eval_split = "test"
    c.cache = True
    c.augment.flip = True
    c.segmentation.aspp = False
    c.segmentation.min_scale = 0.5
    c.segmentation.max_scale = 2.0
    c.segmentation.scale_step = 0.25
    c.segmentation.bn_momentum = 0.99
    c.bn_momentum = 0.9
    c.batch_size = args.batch
    c.eval_batch_size = 50
    c.total_epochs = None
    c.total_steps = args.steps
    c.seed = args.seed
    c.recipe = "deeplab"
    c.optim.lr = 0.05
    c.optim.lr_reference_batch = 16
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.wandb.project = "mnv2_jax-segmentation"
    return c
