"""Offline detection: SSDLite on MobileNetV2 0.35/128 on `mnist_detect_offline` (digits on photos).

    mnv2 train --config configs/detection/offline.py --workdir runs/detect

or, faster, from the backbone of a short offline MNIST classification run at the same width
(arrays of matching name and shape are copied; neither run trains on the held-out digits):

    mnv2 train --config configs/mnist.py:steps=600 --workdir runs/mnist
    mnv2 train --config configs/detection/offline.py --workdir runs/detect --config.init_from=runs/mnist

Argument string (all optional): `configs/detection/offline.py:width=0.35,resolution=128,steps=1200,batch=32,seed=0`.

Measured (seed 0, 1,200 steps = 9.6 epochs, evaluated once at the end on the 500 held-out canvases,
2 CPU cores shared with another training, load average 3.4-6.6, 50-130 images/s):
* from scratch: 11 min 55 s wall; eval AP 0.005, AP50 0.016, AP75 0.002 (EMA weights:
  0.005 / 0.015 / 0.002);
* from the MNIST run (600 steps of 128 at 48 px, 2 min 35 s, 97.0% top-1): 8 min 36 s wall, 11 min
  11 s for both commands; eval AP 0.018, AP50 0.059, AP75 0.007 (EMA weights: 0.022 / 0.064 / 0.009);
  with `--config.optim.lr=0.05` as well: 6 min 52 s wall (load 3.2-4.5), 9 min 27 s for both
  commands; eval AP 0.028, AP50 0.075, AP75 0.013 (EMA weights: 0.032 / 0.079 / 0.019).
Both are far short of the AP50 0.5 a usable detector of these digits should reach: SSD's slow start
(the first ~1,000 steps predict the class prior everywhere; training loss 9.3 / 8.9 at the end,
still falling). The earlier default, 3,000 steps from scratch with zero class biases and evaluations
every 250 steps, took about 45 minutes at load 8-12 for AP 0.029, AP50 0.079, AP75 0.014 (0.021
at step 1,000). Settings that gave no faster start: Keras-style RMSProp (epsilon 1e-7) at 2e-4 with
momentum 0.9 (AP50 0.005 at step 1,000) and at 1e-3 without momentum or random crop (0.003 at step
500), Adam at 1e-3 (the training loss at the same plateau after 300 steps), and momentum SGD at 0.1
with a 0.25-epoch warm-up, cosine decay over 400 steps and clipping at norm 10 (AP50 0.0004 at step
400, training loss 9.7). One limit is the anchors at 128 px: the maps are 8, 4, 2, 1, 1, 1, and a
canvas has only ~3.6 positive anchors (its 1-4 digits, mostly by the forced best match).

What differs from the paper's system (`configs/detection/coco.py`, recipe 'tf_od'), and why:
* 10 classes (the digits) + background; at most 4 objects per image, so 8 padded boxes;
* class-predictor biases start at RetinaNet's prior 0.01 (`detection.class_prior`; TF's SSDLite
  config starts them at zero): every anchor starts as background instead of at p = 0.5 per class;
* batch-norm decay 0.9 instead of 0.9997: a few thousand steps are too few for a slower average;
* TF-Slim's RMSProp (as TF's) with a one-epoch warm-up to 0.02 instead of 0.004, decayed x0.9
  every 2 epochs, and a short weight average (0.99) for evaluation;
* one evaluation, at the last step; the digits are not mirrored (no flip).
"""

from mnv2_jax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, width=0.35, resolution=128, steps=1200, batch=32, seed=0)
    c = base_config()
    c.task = "detection"
    c.width = args.width
    c.resolution = args.resolution
    c.dataset = "mnist_detect_offline"
    c.train_split = "train"
    c.eval_split = "test"
    c.cache = True
    c.augment.flip = False  # digits are not mirror-symmetric
    c.detection.random_crop = True
    c.detection.max_boxes = 8
    c.detection.class_prior = 0.01  # RetinaNet's prior init of the class biases (zero in TF's SSDLite)
    c.batch_size = args.batch
    c.eval_batch_size = 100
    c.total_epochs = None
    c.total_steps = args.steps
    c.seed = args.seed
    c.bn_momentum = 0.9
    c.recipe = "slim"
    c.optim.lr = 0.02
    c.optim.lr_reference_batch = 32
    c.optim.warmup_epochs = 1.0
    c.optim.lr_decay_rate = 0.9
    c.optim.lr_decay_epochs = 2.0
    c.optim.label_smoothing = 0.0
    c.optim.ema_decay = 0.99
    c.log_every_steps = 50
    c.eval_every_steps = args.steps  # once, at the end: evaluations cost training time
    c.checkpoint_every_steps = 500
    c.wandb.project = "mnv2_jax-detection"
    return c
