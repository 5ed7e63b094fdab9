"""The paper's setting: MobileNetV2 on ImageNet (TFDS `imagenet2012`, 1000 classes).

    mnv2 train --config configs/imagenet.py --workdir gs://BUCKET/runs/mnv2_1.0_224
    mnv2 train --config configs/imagenet.py:width=0.5,resolution=160 --workdir ...
    mnv2 train --config configs/imagenet.py:recipe=tpu --workdir ...

Arguments (all optional): width, resolution, expansion, bottleneck_activation
(linear|relu6), residual (bottleneck|expansion|none), recipe (slim|tpu), batch.
Every key can also be overridden with --config.KEY=VALUE.

Recipes (see mnv2_jax.train.optim.RECIPES):
* slim (default): TF-Slim's reproduction, 72.0% top-1 at 1.0/224 -- RMSProp
  (decay 0.9, momentum 0.9, epsilon 1 inside the root, accumulator from 1),
  lr 0.045 x B/96, x0.98 every 2.5 epochs, L2 4e-5, label smoothing 0.1,
  dropout 0.2, batch-norm decay 0.997, EMA 0.9999, 420 epochs, batch-norm
  statistics per group of 96 examples (the paper's 16 workers x 96).
  Expected: 71.8-72.0% (EMA) at 1.0/224. The published TF-Slim checkpoints
  give the other grid points (e.g. 0.5/160 61.0%, 0.35/96 45.5%; README).
* tpu: TF Model Garden's 72.72% recipe -- global batch 4096 in bfloat16, Keras
  RMSProp (epsilon 0.002), lr 0.008 x B/128 with 5 warm-up epochs, x0.96
  every 2.5 epochs, L2 1e-5, 500 epochs, batch norm over each replica.

Time on a TPU slice (an ESTIMATE, not a measurement): a train step costs about
3x the forward pass, 3 x 2 x 300M = 1.8 GFLOP per image at 1.0/224; 420 epochs
of 1.28M images is 5.4e8 images, about 9.7e17 FLOP. MobileNets are
memory-bound (depthwise convs); assuming 5-15% of a v3-8's 420 TFLOP/s bf16
peak gives roughly 4-13 hours, and proportionally less for smaller widths and
resolutions (MAdds scale the cost: `mnv2 info`). Measure your slice with
`mnv2 bench` before planning a sweep.

Preparing the data: TFDS needs the ILSVRC2012 tars in
<data_dir>/downloads/manual, then `tfds build imagenet2012 --data_dir DIR`
(set --config.data_dir=DIR or TFDS_DATA_DIR).
"""

from mnv2_jax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(
        arg,
        width=1.0,
        resolution=224,
        expansion=6.0,
        bottleneck_activation="linear",
        residual="bottleneck",
        recipe="slim",
        batch=0,
    )
    c = base_config()
    c.width = args.width
    c.resolution = args.resolution
    c.expansion = args.expansion
    c.bottleneck_activation = args.bottleneck_activation
    c.residual = args.residual
    c.recipe = args.recipe
    c.dataset = "imagenet2012"
    c.train_split = "train"
    c.eval_split = "validation"
    c.num_classes = 1000
    if args.recipe == "tpu":
        c.batch_size = args.batch or 4096
        c.dtype = "bfloat16"
        c.total_epochs = 500.0
        c.bn_group_size = None
    else:
        c.batch_size = args.batch or 1536
        c.total_epochs = 420.0
        c.bn_group_size = 96
    c.eval_batch_size = 1000  # 50,000 / 1000: no padding needed
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 2000
    c.wandb.project = "mnv2_jax-imagenet"
    return c
