"""A quick real run with a network: MobileNetV2 on CIFAR-10 (TFDS `cifar10`, downloads 160 MB).

    mnv2 train --config configs/cifar10.py --workdir runs/cifar10

Arguments: width (default 1.0), resolution (default 32: the native size; the
stem's stride 2 then leaves 1x1 at the head, as for 224/32 = 7 on ImageNet
the net was designed for, so expect lower accuracy than at 64-96), epochs.
Expected: about 88-92% eval top-1 at 1.0/64 after 60 epochs (an estimate from
published MobileNetV2 CIFAR results; not measured here: this machine has no
network). On 2 CPU cores an epoch at 0.5/32 takes minutes; use a GPU/TPU for
the full run.
"""

from mnv2_jax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, width=1.0, resolution=32, epochs=60.0, batch=128)
    c = base_config()
    c.width = args.width
    c.resolution = args.resolution
    c.dataset = "cifar10"
    c.download = True
    c.train_split = "train"
    c.eval_split = "test"
    c.augment.crop = "pad_crop"
    c.augment.pad = 4
    c.augment.flip = True
    c.eval_crop = 1.0
    c.batch_size = args.batch
    c.total_epochs = args.epochs
    c.bn_momentum = 0.99
    c.optim.lr = 0.01
    c.optim.lr_reference_batch = 128
    c.optim.lr_decay_rate = 0.94
    c.optim.lr_decay_epochs = 1.0
    c.optim.warmup_epochs = 1.0
    c.optim.ema_decay = 0.999
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.wandb.project = "mnv2_jax-cifar10"
    return c
