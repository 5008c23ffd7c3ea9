"""The paper's official dense checkpoints are mmsegmentation and mmdetection files: they load into our models, and
our necks and heads then compute what OpenMMLab's own modules computed with the same weights (the fixtures)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import randomize
from openmmlab_reference import reference_inputs, reference_weights

import metaformer
from metaformer.checkpoints import convert_state_dict
from metaformer.cli import main

FIXTURES = Path(__file__).parent / "data" / "openmmlab"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def close_to(ours: torch.Tensor, reference: dict, what: str) -> None:
    assert list(ours.shape) == reference["shape"], what
    sliced = eval(f"ours{reference['slice']}")  # noqa: S307  a slice string written by the fixture's maker
    expected = torch.tensor(reference["values"])
    assert torch.allclose(sliced, expected, rtol=1e-4, atol=1e-4), f"{what}: {(sliced - expected).abs().max()}"


def openmmlab_file(tmp_path: Path, model_name: str, shapes: dict, out_norms: tuple[int, ...]) -> tuple[Path, dict]:
    """A checkpoint as mmseg/mmdet write it: a random backbone under the official names, the fixture's neck and
    head weights, the classes in ``meta``."""
    trunk = randomize(
        metaformer.create_model(
            model_name.split("_", 1)[1].replace("rcnn_", ""), features_only=True, out_indices=out_norms
        )
    )
    backbone = {f"backbone.{k}": v for k, v in convert_state_dict(trunk.state_dict(), trunk.config, "official").items()}
    weights = reference_weights(shapes)
    path = tmp_path / f"{model_name}_openmmlab.pth"
    classes = [f"class{i}" for i in range(150 if model_name.startswith(("fpn", "upernet")) else 80)]
    torch.save({"meta": {"CLASSES": classes, "mmcv_version": "1.3.17"}, "state_dict": {**backbone, **weights}}, path)
    return path, trunk.state_dict()


def test_mmseg_semantic_fpn_loads_completely_and_computes_as_mmseg(tmp_path):
    reference = fixture("mmseg_fpn")
    path, trunk = openmmlab_file(tmp_path, "fpn_poolformer_s12", reference["shapes"], (0, 1, 2, 3))
    model = metaformer.create_model("fpn_poolformer_s12", checkpoint=path, strict=True).eval()  # nothing left fresh
    assert model.num_classes == 150 and model.labels[:2] == ("class0", "class1")
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in trunk.items())
    features = reference_inputs(reference["inputs"]["shapes"], reference["inputs"]["seed"])
    with torch.no_grad():
        neck = model.neck(features)
        logits = model.head(neck)
    for i, level in enumerate(neck):
        close_to(level, reference["outputs"][f"neck.{i}"], f"neck.{i}")
    close_to(logits, reference["outputs"]["logits"], "logits")

    # convert writes our format, which loads back to the same model
    out = tmp_path / "fpn.safetensors"
    assert main(["convert", str(path), str(out), "--to", "safetensors", "--model", "fpn_poolformer_s12"]) == 0
    again = metaformer.create_model("fpn_poolformer_s12", checkpoint=out, strict=True).eval()
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(image), again(image))
    assert again.labels == model.labels


@pytest.mark.slow
def test_mmseg_upernet_loads_completely_and_computes_as_mmseg(tmp_path):
    """UPerHead and its auxiliary FCNHead against mmseg's own modules (the fixture), parameters and buffers named
    and shaped as mmseg's, every one loaded."""
    reference = fixture("mmseg_upernet")
    path, _ = openmmlab_file(tmp_path, "upernet_poolformer_s12", reference["shapes"], (0, 1, 2, 3))
    model = metaformer.create_model("upernet_poolformer_s12", checkpoint=path, strict=True).eval()
    head_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    mmseg_params = sum(
        math.prod(shape)
        for key, shape in reference["shapes"].items()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert head_params == mmseg_params == 30_487_852
    features = reference_inputs(reference["inputs"]["shapes"], reference["inputs"]["seed"])
    with torch.no_grad():
        close_to(model.head.bottleneck(model.head.pyramid(features[-1])), reference["outputs"]["bottleneck"], "psp")
        close_to(model.head(features), reference["outputs"]["logits"], "logits")
        close_to(model.aux_head(features[2]), reference["outputs"]["aux_logits"], "aux_logits")
    out = tmp_path / "upernet.safetensors"
    assert main(["convert", str(path), str(out), "--to", "safetensors", "--model", "upernet_poolformer_s12"]) == 0
    again = metaformer.create_model("upernet_poolformer_s12", checkpoint=out, strict=True).eval()
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model(image), again(image))


def test_mmdet_retinanet_loads_and_computes_as_mmdet(tmp_path):
    reference = fixture("mmdet_retinanet")
    # mmpretrain's backbone keeps stage 0's output norm, which RetinaNet (C3-C5) does not use: ignored.
    path, _ = openmmlab_file(tmp_path, "retinanet_poolformer_s12", reference["shapes"], (0, 1, 2, 3))
    model = metaformer.create_model("retinanet_poolformer_s12", checkpoint=path, strict=True).eval()
    features = reference_inputs(reference["inputs"]["shapes"], reference["inputs"]["seed"])
    with torch.no_grad():
        levels = list(model.backbone.fpn(OrderedDict((str(i), x) for i, x in enumerate(features[1:]))).values())
        for i, level in enumerate(levels):
            close_to(level, reference["outputs"][f"neck.{i}"], f"neck.{i}")
            head = model.head
            scores = head.classification_head.cls_logits(head.classification_head.conv(level))
            deltas = head.regression_head.bbox_reg(head.regression_head.conv(level))
            close_to(scores, reference["outputs"][f"cls_score.{i}"], f"cls_score.{i}")
            close_to(deltas, reference["outputs"][f"bbox_pred.{i}"], f"bbox_pred.{i}")


def test_mmdet_mask_rcnn_loads_and_computes_as_mmdet(tmp_path):
    reference = fixture("mmdet_mask_rcnn")
    path, _ = openmmlab_file(tmp_path, "mask_rcnn_poolformer_s12", reference["shapes"], (0, 1, 2, 3))
    model = metaformer.create_model("mask_rcnn_poolformer_s12", checkpoint=path, strict=True).eval()
    inputs = reference["inputs"]
    features = reference_inputs(inputs["shapes"], inputs["seed"])
    boxes = reference_inputs(inputs["bbox_head"]["shapes"], inputs["bbox_head"]["seed"])[0]
    masks = reference_inputs(inputs["mask_head"]["shapes"], inputs["mask_head"]["seed"])[0]
    outputs = reference["outputs"]
    with torch.no_grad():
        levels = list(model.backbone.fpn(OrderedDict((str(i), x) for i, x in enumerate(features))).values())
        objectness, deltas = model.rpn.head(levels)
        scores, box_deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(boxes))
        mask_logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(masks))
    for i, level in enumerate(levels):
        close_to(level, outputs[f"neck.{i}"], f"neck.{i}")
        close_to(objectness[i], outputs[f"rpn_cls.{i}"], f"rpn_cls.{i}")
        close_to(deltas[i], outputs[f"rpn_reg.{i}"], f"rpn_reg.{i}")
    # mmdet puts the background class last and has no background rows for boxes and masks; torchvision has them
    # first. The background rows are zero here and never used by torchvision's post-processing.
    close_to(torch.cat([scores[:, 1:], scores[:, :1]], 1), outputs["cls_score"], "cls_score")
    close_to(box_deltas[:, 4:], outputs["bbox_pred"], "bbox_pred")
    close_to(mask_logits[:, 1:], outputs["mask_logits"], "mask_logits")


def test_a_dense_file_for_another_model_names_what_differs(tmp_path):
    reference = fixture("mmseg_fpn")
    path, _ = openmmlab_file(tmp_path, "fpn_poolformer_s12", reference["shapes"], (0, 1, 2, 3))
    with pytest.raises(metaformer.CheckpointError, match="does not fit fpn_poolformer_s24"):
        metaformer.create_model("fpn_poolformer_s24", checkpoint=path)
    with pytest.raises(metaformer.CheckpointError, match="does not name its model"):
        metaformer.convert_checkpoint(path, tmp_path / "x.safetensors", "metaformer")
