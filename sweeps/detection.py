"""SSDLite detection over width and resolution on COCO 2017: AP against multiply-adds (8 runs).

    mnv2 sweep list sweeps/detection.py
    mnv2 sweep launch sweeps/detection.py --tpu v3-8-a --zone europe-west4-a \
        --workdir gs://BUCKET/sweeps/detection --data-dir gs://BUCKET/tfds
    mnv2 plot ap runs/detection        # COCO AP vs multiply-adds
    mnv2 plot table runs/detection     # Table 6: params, MAdds, AP, AP50, AP75

The paper's system (configs/detection/coco.py, recipe 'tf_od': 320 x 320, batch 24) at widths
0.35, 0.5, 0.75 and 1.0, and the 1.0 network at 192, 256, 300 (TF's sample config) and 384:
from 0.22B to 1.13B multiply-adds with the head (`mnv2 sweep list`). Only 1.0/320 has a
published number (Table 6: 22.1 mAP on test-dev); none of these runs has been made here.
"""

NAME = "detection"
CONFIG = "configs/detection/coco.py"
WANDB_PROJECT = "mnv2_jax-detection"
SEEDS = 1


def sweep(add):
    for width in (0.35, 0.5, 0.75, 1.0):
        add(width=width, resolution=320)
    for resolution in (192, 256, 300, 384):
        add(width=1.0, resolution=resolution)
