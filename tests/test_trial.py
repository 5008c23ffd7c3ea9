"""Issue 20's trial on unseen data, as a user meets it: Grad-CAM pictures of small models drawn over the photo,
the training loss and learning rate logged every few steps, an extended schedule said and chosen, and the small
items (eval --json's confusion matrix, the segmentation legend, the help texts)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, randomize
from PIL import Image
from test_train import FAST, subset
from tiny import TINY

import metaformer
from metaformer.cli import main
from metaformer.explain import cam_stage

CIFAR_CAT = DATA_DIR / "cifar10-small" / "train" / "cat" / "0000.jpg"


@pytest.fixture
def small_classifier(tmp_path):
    """The tiny classifier at 32 pixels, as a CIFAR run leaves it: its last stage is 1x1 there."""
    if not CIFAR_CAT.is_file():
        pytest.skip(f"real images not found at {CIFAR_CAT}")
    labels = [f"class {i}" for i in range(10)]
    model = randomize(metaformer.create_model(TINY, num_classes=10, image_size=32, labels=labels), seed=5).eval()
    return model, metaformer.save_checkpoint(model, tmp_path / "small.safetensors")


def test_grad_cam_of_a_small_input_explains_the_last_stage_with_a_shape(small_classifier):
    model, _ = small_classifier
    pixels = metaformer.ImageProcessor.for_model(model)([CIFAR_CAT])
    assert [grid for grid in model.config.stage_grids(32)] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert cam_stage(model, (32, 32)) == 2 and cam_stage(model, (224, 224)) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default stage says nothing
        heat = metaformer.grad_cam(model, pixels)
    assert heat.shape == (1, 32, 32) and heat.std() > 0.05  # a map with a shape, not a flat one
    assert torch.equal(heat, metaformer.grad_cam(model, pixels, layer=model.stages[2]))
    with pytest.warns(UserWarning, match="map is 1x1 at this image size, so the heat map is flat"):
        flat = metaformer.grad_cam(model, pixels, layer=model.stages[3])
    assert flat.std() < 1e-6


def test_cam_command_draws_the_small_photo_large_and_says_which_stage(small_classifier, tmp_path, capsys):
    _, checkpoint = small_classifier
    output = tmp_path / "cams"
    assert main(["cam", str(CIFAR_CAT), "--checkpoint", str(checkpoint), "--output", str(output), "--json"]) == 0
    captured = capsys.readouterr()
    assert "the last stage's map is 1x1" in captured.err and "explaining stage 2 (2x2) instead" in captured.err
    picture = np.asarray(Image.open(json.loads(captured.out)["picture"]))
    assert picture.shape[1] == 384 and picture.shape[0] > 384  # 32 pixels drawn 12 times larger, under a caption
    drawn = picture[-384:]
    assert drawn[100:280, 100:280].std() > 10  # the heat over the crop varies


def test_crop_box_is_where_the_model_looks(imagenet_samples):
    processor = metaformer.ImageProcessor(size=64, crop_pct=0.8)
    for path in imagenet_samples[:3]:
        photo = Image.open(path).convert("RGB")
        for shown in (photo, photo.transpose(Image.Transpose.ROTATE_90)):  # landscape and portrait
            box = processor.crop_box(*shown.size)
            crop = shown.resize((64, 64), Image.Resampling.BICUBIC, box=box)
            ours = processor.to_uint8(processor.transform(shown)).permute(1, 2, 0).numpy().astype(float)
            # Resizing then cropping, against cropping then resizing: the same pixels up to interpolation.
            assert np.abs(ours - np.asarray(crop, dtype=float)).mean() < 6
            shifted = shown.resize((64, 64), Image.Resampling.BICUBIC, box=(0, 0, box[2] - box[0], box[3] - box[1]))
            assert np.abs(ours - np.asarray(shifted, dtype=float)).mean() > 10  # a wrong box would be seen
