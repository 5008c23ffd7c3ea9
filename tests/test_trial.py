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
from metaformer.engine.plot import validation_label
from metaformer.engine.schedules import cosine
from metaformer.errors import ConfigError
from metaformer.explain import cam_stage
from metaformer.tasks import RunSettings, train
from metaformer.tasks.detection.recipe import DetectionRecipe

QUIET = {"num_workers": 0, "progress": False}
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


@pytest.fixture
def cifar3(tmp_path):
    return subset(tmp_path / "data", ["airplane", "frog", "truck"], train=32, val=12)


def logged(run) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_loss_and_learning_rate_every_few_steps_resumed_alike(cifar3, tmp_path):
    # 96 images in batches of 8: 12 steps an epoch; a line every 5 steps, over epoch ends.
    common = ["--model", TINY, "--epochs", "3", "--batch-size", "8", "--log-every", "5", *FAST]
    assert main(["train", str(cifar3), "--output", str(tmp_path / "straight"), *common]) == 0
    assert main(["train", str(cifar3), "--output", str(tmp_path / "cut"), *common, "--stop-after", "1"]) == 0
    assert [s["step"] for s in logged(tmp_path / "cut")] == [5, 10]
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    steps = logged(tmp_path / "straight")
    assert steps == logged(tmp_path / "cut")  # a resumed run logs what the straight run logs
    assert [s["step"] for s in steps] == [5, 10, 15, 20, 25, 30, 35]
    assert [s["epoch"] for s in steps[:3]] == [0.4167, 0.8333, 1.25]
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert steps[2]["lr"] > steps[1]["lr"] and records[0]["lr"] == pytest.approx(
        steps[1]["lr"] + (steps[1]["lr"] - steps[0]["lr"]) * 2 / 5  # step 12 on the warm-up's line
    )
    assert len({round(s["train_loss"], 6) for s in steps}) == len(steps)  # a mean per window, not one figure
    width, height = Image.open(tmp_path / "straight" / "curves.png").size
    assert (width, height) == (1500, 400)  # loss, learning rate and validation side by side


@pytest.mark.slow
def test_an_extended_run_keeps_its_schedule_unless_told(cifar3, tmp_path, capsys):
    common = ["--model", TINY, "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--warmup-epochs", "0.5"]
    common += ["--log-every", "1"]
    assert main(["train", str(cifar3), "--output", str(tmp_path / "kept"), *common, *FAST]) == 0
    (tmp_path / "spread").mkdir()
    for path in (tmp_path / "kept").iterdir():
        (tmp_path / "spread" / path.name).write_bytes(path.read_bytes())
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "kept"), "--epochs", "4"]) == 0
    said = capsys.readouterr().out
    assert "extended from 2 to 4 epochs: the cosine keeps its 2 epochs, so epochs 3-4 train at its floor" in said
    assert "--schedule-extend" in said
    kept = logged(tmp_path / "kept")
    assert len(kept) == 24 and all(s["lr"] == 1e-5 for s in kept[12:])  # 6 steps an epoch; the floor, --min-lr
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["recipe"]["schedule_epochs"] == 2
    assert main(["train", "--resume", str(tmp_path / "spread"), "--epochs", "4", "--schedule-extend"]) == 0
    assert "the cosine now spans all 4 epochs" in capsys.readouterr().out
    spread = logged(tmp_path / "spread")
    assert spread[:12] == kept[:12]
    assert spread[12]["lr"] > 10 * spread[11]["lr"]  # the rate rises again, along the 4-epoch cosine
    assert spread[12]["lr"] == cosine(12 / 6, 1e-3, 4, 0.5, 1e-6, 1e-5)
    # --schedule-extend needs a longer run, and a run to extend.
    assert main(["train", "--resume", str(tmp_path / "spread"), "--schedule-extend"]) == 2
    assert "give --epochs more than the run's 4" in capsys.readouterr().err
    assert main(["train", str(cifar3), "--model", TINY, "--schedule-extend"]) == 2
    assert "--schedule-extend goes with --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's refusal of a non-positive count
        main(["train", str(cifar3), "--model", TINY, "--log-every", "0"])
    assert "--log-every" in capsys.readouterr().err
    settings = RunSettings(data=str(cifar3), model=TINY, output=str(tmp_path / "x"), log_every=0, **QUIET)
    with pytest.raises(ConfigError, match="log_every must be a positive number of steps, got 0"):
        train(settings)


def test_detection_decays_stay_or_move_with_the_longer_run():
    recipe = DetectionRecipe()
    kept, said = recipe.extended(24, respread=False)
    assert kept.decay_epochs == (8, 11) and "stay at epochs 8 and 11, so epochs 13-24 train at the last rate" in said
    moved, said = recipe.extended(24, respread=True)
    assert moved.decay_epochs == (16, 22) and "move from epochs 8 and 11 to 16 and 22" in said  # mmdet's 2x


def test_eval_json_holds_the_confusion_matrix(cifar3, tmp_path, capsys):
    model = randomize(metaformer.create_model(TINY, num_classes=3, image_size=32, labels=["airplane", "frog", "truck"]))
    weights = metaformer.save_checkpoint(model, tmp_path / "m.safetensors")
    common = ["eval", str(cifar3), "--checkpoint", str(weights), "--num-workers", "0"]
    assert main([*common, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    confusion = result["confusion"]
    assert confusion["rows"] == confusion["columns"] == ["airplane", "frog", "truck"]
    matrix = np.array(confusion["matrix"])
    assert matrix.sum(1).tolist() == [12, 12, 12] and matrix.trace() / 36 * 100 == pytest.approx(result["top1"])
    assert main([*common, "--output", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "eval.json").read_text()) == result


def test_help_texts_say_what_the_commands_take(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "a Hugging Face or timm folder" in said and "timm (model.safetensors and config.json" in said
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "float16: half precision, for GPUs" in said
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "--log-every" in said and "--schedule-extend" in said


def test_the_curves_name_coco_figures_as_what_they_are():
    assert validation_label(["AP", "AP50", "mask_AP"]) == "COCO AP / AR (x100)"
    assert validation_label(["top1", "top5"]) == validation_label(["mIoU", "mAcc"]) == "%"
