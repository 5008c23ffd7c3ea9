"""Grad-CAM: equal to the ``grad-cam`` package on real photos, and the ``cam`` command's captioned pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize, slow_but
from PIL import Image

import metaformer
from metaformer.cli import main
from metaformer.errors import ConfigError

pytestmark = pytest.mark.peer  # compared against a peer library


@pytest.mark.parametrize("name", slow_but(["poolformer_s12", "convformer_s18", "caformer_s18"], {"poolformer_s12"}))
def test_grad_cam_equals_the_grad_cam_package(name, imagenet_samples):
    pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")  # here: its import takes seconds, the others need none
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # Two blocks a stage: the map is taken at a stage's output, whatever the depth before it.
    model = randomize(metaformer.create_model(name, depths=(2, 2, 2, 2)), seed=31).eval()
    pixels = metaformer.ImageProcessor.for_model(model)(imagenet_samples[:3])
    ours = metaformer.grad_cam(model, pixels)
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.stages[-1]]) as cam:
        theirs = cam(input_tensor=pixels, targets=None)
    assert ours.shape == (3, 224, 224) and ours.min() >= 0 and ours.max() <= 1
    assert np.abs(ours.numpy() - theirs).max() <= 1e-5
    # Chosen classes and an earlier layer.
    targets = [7, 70, 700]
    ours = metaformer.grad_cam(model, pixels, targets=targets, layer=model.stages[2])
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.stages[2]]) as cam:
        theirs = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(t) for t in targets])
    assert np.abs(ours.numpy() - theirs).max() <= 1e-5


def test_grad_cam_depends_on_the_class_and_leaves_the_model_untouched(imagenet_samples):
    model = randomize(metaformer.create_model("poolformer_s12"), seed=32).eval().requires_grad_(False)
    pixels = metaformer.ImageProcessor.for_model(model)(imagenet_samples[:1])
    first, second = (metaformer.grad_cam(model, pixels, targets=[t]) for t in (1, 500))
    assert (first - second).abs().max() > 0.1  # frozen parameters still give gradients at the layer
    assert all(p.grad is None for p in model.parameters()) and not model._forward_hooks
    assert not any(m._forward_hooks for m in model.modules())


def test_grad_cam_refuses_what_it_cannot_explain(imagenet_samples):
    model = metaformer.create_model("poolformer_s12").eval()
    pixels = torch.randn(2, 3, 224, 224)
    with pytest.raises(ConfigError, match="fused model is inference-only"):
        metaformer.grad_cam(metaformer.fuse(model), pixels)
    with torch.inference_mode(), pytest.raises(ConfigError, match="outside torch.inference_mode"):
        metaformer.grad_cam(model, pixels)
    with pytest.raises(ConfigError, match="one class index per image"):
        metaformer.grad_cam(model, pixels, targets=[1])
    with pytest.raises(ConfigError, match="must be in 0..999"):
        metaformer.grad_cam(model, pixels, targets=[1, 1000])


def test_cam_command_writes_captioned_overlays(imagenet_samples, tmp_path, capsys):
    model = randomize(metaformer.create_model("poolformer_s12"), seed=33)
    checkpoint = metaformer.save_checkpoint(model, tmp_path / "s12.safetensors")
    output = tmp_path / "cams"
    photos = [str(p) for p in imagenet_samples[:2]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    args = [
        "cam",
        *photos,
        str(broken),
        "--model",
        "poolformer_s12",
        "--checkpoint",
        str(checkpoint),
        "--output",
        str(output),
        "--json",
    ]
    assert main(args) == 1  # the broken file is reported; the photos are still explained
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"path": str(broken), "error": lines[-1]["error"]}
    with torch.no_grad():
        probs = model.eval()(metaformer.ImageProcessor.for_model(model)(photos)).softmax(-1)
    processor = metaformer.ImageProcessor.for_model(model)
    for line, row, photo in zip(lines[:2], probs, photos, strict=True):
        assert line["index"] == int(row.argmax()) and line["prob"] == pytest.approx(float(row.max()), abs=1e-5)
        picture = np.asarray(Image.open(line["picture"]))
        # The whole photo at a readable size (short side 384 for these 500-pixel ImageNet photos), under a caption.
        width, height = Image.open(photo).size
        scale = 384 / min(width, height)
        assert picture.shape[1] == round(width * scale) and picture.shape[0] > round(height * scale)
        band, drawn = picture[: picture.shape[0] - round(height * scale)], picture[-round(height * scale) :]
        assert (band == 255).mean() > 0.5 and (band < 128).any()  # white, with dark text
        left, top, right, bottom = (round(edge * scale) for edge in processor.crop_box(width, height))
        assert drawn[top + 2 : bottom - 2, left + 2 : right - 2].std() > 10  # the heat over the crop
        outside = np.concatenate([drawn[:, : left - 1].reshape(-1, 3), drawn[:, right + 1 :].reshape(-1, 3)])
        assert outside.size and outside.max() <= 255 // 2 + 40  # dimmed: the model did not see it
    # Pictures are not overwritten without --force; a class by name.
    assert main(args) == 1 and "--force" in capsys.readouterr().err
    assert main([*args, "--force", "--target", "tabby"]) == 1
    assert all(json.loads(line).get("index", 281) == 281 for line in capsys.readouterr().out.splitlines())


def test_cam_target_must_be_a_class_of_the_model(tmp_path, capsys):
    checkpoint = metaformer.save_checkpoint(metaformer.create_model("poolformer_s12"), tmp_path / "s.safetensors")
    base = ["cam", str(tmp_path), "--model", "poolformer_s12", "--checkpoint", str(checkpoint)]
    assert main([*base, "--target", "cat"]) == 2
    assert "did you mean 'oystercatcher', 'tiger cat'" in capsys.readouterr().err
    assert main([*base, "--target", "1000"]) == 2 and "0..999" in capsys.readouterr().err
    assert main(["cam", str(tmp_path), "--model", "fpn_poolformer_s12", "--checkpoint", str(checkpoint)]) == 2
