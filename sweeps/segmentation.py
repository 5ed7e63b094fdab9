"""Table 7 offline: Mobile DeepLabv3 over output stride x ASPP x width on `mnist_seg_offline` (8 runs).

    mnv2 sweep list sweeps/segmentation.py
    mnv2 sweep run sweeps/segmentation.py --workdir runs/segmentation
    mnv2 plot miou runs/segmentation     # mIOU vs multiply-adds, one curve per output stride / ASPP
    mnv2 plot table runs/segmentation    # Table 7: OS, ASPP, MF, flip, params, MAdds, mIOU

Widths 0.35 and 0.5, output stride 16 and 8, without and with the ASPP branches, on
configs/segmentation/offline.py (digits on photos, 11 classes). Each run's `summary.json`
holds its multiply-adds and parameters at the eval size (128 x 128) and `eval/miou`, the axes
of the paper's Table 7; for PASCAL VOC, point CONFIG at configs/segmentation/voc.py.
"""

NAME = "segmentation"
CONFIG = "configs/segmentation/offline.py"
WANDB_PROJECT = "mnv2_jax-segmentation"
SEEDS = 1


def sweep(add):
    for width in (0.35, 0.5):
        for output_stride in (16, 8):
            for aspp in (False, True):
                add(width=width, output_stride=output_stride, **{"segmentation.aspp": aspp})
