"""The tests' tiny architectures: PoolFormer-S12's blocks, one per stage, at a fifth of its widths, as a classifier
and as the trunk of each dense model. Registered as a user registers a model, for the tests that train, resume,
kill, export and refuse, where what is checked is the run and not the size of the model. Conftest imports it; a
test's child process imports it (``import tiny``), and a test that runs the command line in a child process runs
this file as it (``python tests/tiny.py train ...``)."""

from __future__ import annotations

import sys

import metaformer
from metaformer.models.zoo import get_spec

TINY = "test_tiny_poolformer"
TINY_FPN = "test_tiny_fpn"  # Semantic FPN, 11 classes as CamVid
TINY_UPERNET = "test_tiny_upernet"  # UperNet, 11 classes
TINY_RETINANET = "test_tiny_retinanet"  # RetinaNet, 80 classes as COCO
TINY_MASK_RCNN = "test_tiny_mask_rcnn"  # Mask R-CNN, 80 classes as COCO

if TINY not in metaformer.list_models():
    config = get_spec("poolformer_s12").config.replace(depths=(1, 1, 1, 1), widths=(16, 24, 32, 48))
    metaformer.register_model(TINY, config, "PoolFormer-S12's blocks, one per stage, narrow (tests)")
    metaformer.register_model(TINY_FPN, config, "Semantic FPN on the tiny PoolFormer (tests)",
                              task="segmentation", num_classes=11)  # fmt: skip
    metaformer.register_model(TINY_UPERNET, config, "UperNet on the tiny PoolFormer (tests)",
                              task="segmentation", num_classes=11, head="upernet")  # fmt: skip
    for name, kind in ((TINY_RETINANET, "detection"), (TINY_MASK_RCNN, "instance_segmentation")):
        metaformer.register_model(name, config, f"{kind} on the tiny PoolFormer (tests)", task=kind, num_classes=80)

if __name__ == "__main__":
    from metaformer.cli import main

    sys.exit(main())
