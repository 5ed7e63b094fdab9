"""Offline detection: SSDLite on MobileNetV2 0.35/128 on `mnist_detect_offline` (digits on photos).

    mnv2 train --config configs/detection/offline.py --workdir runs/detect

Argument string (all optional): `configs/detection/offline.py:width=0.35,resolution=128,steps=3000,batch=32,seed=0`.

Measured (seed 0, 2 CPU cores shared with other jobs at load 8-12, 30-90 images/s, evaluating
every 250 steps): 3,000 steps (24 epochs) took about 45 minutes (38 of them training, 5
evaluating) and reached eval AP 0.029,
AP50 0.079, AP75 0.014 on the 500 held-out canvases (EMA weights: 0.027 / 0.076 / 0.011). AP50
was still rising (0.021 at step 1,000, 0.043 at 2,000, 0.079 at 3,000): this is SSD's slow start
(the first ~1,000 steps predict the class prior everywhere), not a converged detector, and it is
short of the AP50 0.5 this offline run should show. Three other settings gave no faster start:
Keras-style RMSProp (epsilon 1e-7) at 2e-4 with momentum 0.9 (AP50 0.005 at step 1,000) and at
1e-3 without momentum or random crop (0.003 at step 500), and Adam at 1e-3 (the training loss at
the same plateau after 300 steps).

What differs from the paper's system (`configs/detection/coco.py`, recipe 'tf_od'), and why:
* 10 classes (the digits) + background; at most 4 objects per image, so 8 padded boxes;
* batch-norm decay 0.9 instead of 0.9997: a few thousand steps are too few for a slower average;
* TF-Slim's RMSProp (as TF's) with a one-epoch warm-up to 0.02 instead of 0.004, decayed x0.9
  every 2 epochs, and a short weight average (0.99) for evaluation;
* eval every 500 steps; the digits are not mirrored (no flip).
"""

from mnv2_jax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, width=0.35, resolution=128, steps=3000, batch=32, seed=0)
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
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.wandb.project = "mnv2_jax-detection"
    return c
