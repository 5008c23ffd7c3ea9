"""Sharing: the Hugging Face folder that ``transformers.pipeline`` loads offline, and the timm folder that
``timm.create_model("local-dir:...")`` builds and preprocesses from."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import randomize, slow_but
from PIL import Image

import metaformer
from metaformer.checkpoints.saving import timm_head_difference
from metaformer.cli import main
from metaformer.data import imagenet_classes, imagenet_labels

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

pytestmark = pytest.mark.peer  # compared against a peer library


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "s12.safetensors"
    return metaformer.save_checkpoint(randomize(metaformer.create_model("poolformer_s12"), seed=21), path)


def predict_json(capsys, checkpoint, photos) -> list[dict]:
    capsys.readouterr()
    args = ["predict", *map(str, photos), "--model", "poolformer_s12", "--checkpoint", str(checkpoint), "--json"]
    assert main(args) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_hugging_face_pipeline_loads_the_folder_offline_and_agrees_with_predict(
    checkpoint, imagenet_samples, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "hf"
    assert main(["convert", str(checkpoint), str(folder), "--to", "hf"]) == 0
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"]["281"] == "tabby" and config["label2id"]["tabby"] == 281
    photos = [p for p in imagenet_samples[::7] if Image.open(p).getexif().get(0x0112, 1) == 1]  # upright as stored
    ours = predict_json(capsys, checkpoint, photos)

    # The pipeline exactly as a user writes it: its default (torchvision) processor resizes in tensors, so pixels
    # differ from Pillow's by rounding (one 8-bit level at most), not by the transform.
    pipe = transformers.pipeline("image-classification", model=str(folder), top_k=5)
    ours_pixels = metaformer.ImageProcessor.for_model("poolformer_s12")(photos)
    theirs_pixels = pipe.image_processor([Image.open(p).convert("RGB") for p in photos], return_tensors="pt")
    difference = (theirs_pixels["pixel_values"] - ours_pixels).abs()
    assert difference.max() <= 1.01 / 255 / min(metaformer.data.IMAGENET_STD) and difference.mean() < 1e-3
    results = pipe([str(p) for p in photos])
    assert all(len(r) == 5 and all(e["label"] in imagenet_labels() for e in r) for r in results)

    # With Pillow's resize, as `predict` uses, the pipeline gives predict's top-5 and probabilities.
    pil = transformers.AutoImageProcessor.from_pretrained(folder, backend="pil")
    pipe = transformers.pipeline("image-classification", model=str(folder), image_processor=pil, top_k=5)
    for result, expected in zip(pipe([str(p) for p in photos]), ours, strict=True):
        assert [e["label"] for e in result] == [e["label"] for e in expected["topk"]]
        assert [e["score"] for e in result] == pytest.approx([e["prob"] for e in expected["topk"]], abs=1e-4)


def test_hugging_face_folder_keeps_a_fine_tuned_models_classes_and_size(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = metaformer.create_model("poolformer_s12", num_classes=3, image_size=256)
    model.reset_classifier(3, labels=["cat", "dog", "owl"])
    folder = metaformer.save_checkpoint(model, tmp_path / "pets", to="hf")
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 256} and processor["crop_size"] == {"height": 256, "width": 256}
    pipe = transformers.pipeline("image-classification", model=str(folder))
    assert {e["label"] for e in pipe(Image.new("RGB", (300, 200), "white"), top_k=3)} == {"cat", "dog", "owl"}
    assert metaformer.create_model("poolformer_s12", checkpoint=folder).labels == ("cat", "dog", "owl")


@pytest.mark.parametrize("name", slow_but(["poolformer_s12", "caformer_s18"], {"poolformer_s12"}))
def test_timm_builds_and_preprocesses_from_the_folder(name, imagenet_samples, tmp_path):
    model = randomize(metaformer.create_model(name), seed=22).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = metaformer.save_checkpoint(model, tmp_path / "timm", to="timm")
    said = [str(w.message) for w in caught if "timm's PoolFormer v1" in str(w.message)]
    assert len(said) == (0 if model.config.is_baseline else 1), said
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    data = timm.data.resolve_data_config({}, model=theirs)
    assert data["crop_pct"] == model.pretrained_cfg.crop_pct and data["interpolation"] == "bicubic"
    pixels = timm.data.create_transform(**data)(Image.open(imagenet_samples[0]).convert("RGB"))[None]
    ours_pixels = metaformer.ImageProcessor.for_model(model, exif_transpose=False)(imagenet_samples[0])
    assert (pixels - ours_pixels).abs().max() <= 1e-5
    with torch.no_grad():
        assert (theirs.forward_features(pixels) - model.forward_features(pixels)).abs().max() <= 1e-4
        if model.config.is_baseline:  # timm's PoolFormer v1 pools before its final norm; the Baselines agree
            theirs.head.fc.norm.eps = 1e-5  # timm's MLP head uses 1e-6, the official code 1e-5 (test_baselines)
            assert (theirs(pixels) - model(pixels)).abs().max() <= 1e-4
        else:  # the difference save_checkpoint warns of is timm's
            apart = (theirs(pixels).softmax(-1) - model(pixels).softmax(-1)).abs().max().item()
            assert apart > 1e-3 and timm_head_difference(model, pixels) == pytest.approx(apart, abs=1e-5)
    assert theirs.pretrained_cfg["label_names"][:2] == ["n01440764", "n01443537"]
    assert theirs.pretrained_cfg["label_descriptions"]["n01440764"] == imagenet_classes()[0][1]
    # ...and we read it back with its English class names.
    assert metaformer.create_model(name, checkpoint=folder).labels[:2] == ("tench", "goldfish")


def test_timm_folder_is_refused_for_models_timm_lacks(tmp_path, capsys):
    path = metaformer.save_checkpoint(metaformer.create_model("metaformer_pppa_s12_224"), tmp_path / "a.safetensors")
    assert main(["convert", str(path), str(tmp_path / "folder"), "--to", "timm"]) == 2
    assert "timm has no architecture" in capsys.readouterr().err and not (tmp_path / "folder").exists()
