"""Mobile DeepLabv3 on PASCAL VOC 2012 (the paper's Table 7), TF DeepLab's `deeplab` recipe.

    mnv2 import-keras --width 1.0 --resolution 224 --out weights/keras_1.0_224      # ImageNet weights
    mnv2 train --config configs/segmentation/voc.py --workdir runs/deeplab_voc \
        --config.init_from=weights/keras_1.0_224 --config.data_dir=DATA_DIR

Data: `voc2012_seg_aug` (`train_aug` 10,582 / `val` 1,449), built from VOCtrainval_11-May-2012.tar and
SBD's benchmark.tgz placed in DATA_DIR/downloads/manual (the first `mnv2 train` prepares it). Recipe
(DeepLab's `train.py` and `local_test_mobilenetv2.sh`): MobileNetV2 1.0 at output stride 16, image
pooling + 1x1 head without ASPP, crop 513, random scale 0.5-2.0 in steps of 0.25, flips, batch 16
with batch-norm fine-tuning, momentum SGD 0.9 with the poly learning rate 0.007 (power 0.9) over
30,000 steps, L2 4e-5; eval on whole `val` images padded to 513, single scale. Argument string
(all optional): `configs/segmentation/voc.py:width=1.0,output_stride=16,aspp=false,steps=30000,batch=16`.

Expected: the paper's 75.32% mIOU needs COCO pretraining between ImageNet and VOC, which this
recipe does not do; from ImageNet weights alone DeepLab users report about 70-71% (HEADS.md 8.3).
Not run here: it needs the VOC archives and an accelerator (30,000 steps of 16 x 513 x 513).
"""

from mnv2_jax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, width=1.0, output_stride=16, aspp=False, steps=30_000, batch=16, seed=0)
    c = base_config()
    c.task = "segmentation"
    c.width = args.width
    c.resolution = 513  # DeepLab's crop and eval size (513 = 16 x 32 + 1: corners align)
    c.output_stride = args.output_stride
    c.dataset = "voc2012_seg_aug"
    c.train_split = "train_aug"
    c.eval_split = "val"
    c.segmentation.aspp = args.aspp
    c.batch_size = args.batch
    c.eval_batch_size = 8
    c.total_epochs = None
    c.total_steps = args.steps
    c.seed = args.seed
    c.recipe = "deeplab"
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 1000
    c.wandb.project = "mnv2_jax-segmentation"
    return c
