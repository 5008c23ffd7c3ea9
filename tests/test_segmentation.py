"""Semantic FPN: the paper's parameter counts, real CamVid data, mmseg's metrics, training, evaluation, pictures."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR
from PIL import Image
from safetensors.torch import load_file
from tiny import TINY_FPN, TINY_UPERNET

import metaformer
from metaformer.cli import main
from metaformer.engine.schedules import poly
from metaformer.errors import DatasetError
from metaformer.tasks.segmentation.data import IGNORE, SegmentationFolder, TrainTransform, detect_layout, eval_size
from metaformer.tasks.segmentation.metrics import confusion, scores

# The paper's Table 3 (150 classes). S24's printed 23.2 M contradicts its own S12 and S36 rows: the S12->S24 and
# S24->S36 backbones differ by the same 9.47 M, so S24 lies midway, at 25.1 M.
PARAMS = {"s12": 15.7, "s24": 25.1, "s36": 34.6, "m36": 59.8, "m48": 77.1}


@pytest.mark.parametrize("size", sorted(PARAMS))
def test_parameter_counts(size):
    model = metaformer.create_model(f"fpn_poolformer_{size}")
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - PARAMS[size]) <= 0.2


def test_forward_backward_on_odd_sizes():
    model = metaformer.create_model("fpn_poolformer_s12", num_classes=5).train()
    for height, width in ((97, 65), (64, 130)):
        logits = model(torch.randn(2, 3, height, width))
        assert logits.shape == (2, 5, height, width)
        logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.fixture
def camvid():
    root = DATA_DIR / "camvid"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


def test_reads_real_camvid(camvid):
    layout = detect_layout(camvid, 11, ignore_index=11)
    dataset = SegmentationFolder(camvid, "val", layout)
    assert len(dataset) == 34
    image, mask = dataset.read(0)
    assert image.shape == (3, 360, 480) and image.dtype == torch.uint8 and mask.shape == (360, 480)
    values = set(mask.unique().tolist())
    assert values <= set(range(11)) | {IGNORE} and len(values) > 3  # void (11) became the ignore label
    crop, target = TrainTransform((1024, 256), 256)(image, mask)
    assert crop.shape == (3, 256, 256) and target.shape == (256, 256) and crop.dtype == torch.float32


def test_ade20k_layout_reduces_the_zero_label(tmp_path):
    for split in ("training", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    Image.new("RGB", (40, 32)).save(tmp_path / "images" / "training" / "a.jpg")
    mask = np.zeros((32, 40), np.uint8)
    mask[:, 20:] = 150
    mask[:4] = 1
    Image.fromarray(mask).save(tmp_path / "annotations" / "training" / "a.png")
    mask[31, :5] = 255  # as mmseg: 255 (254 once reduced) is ignored too, not an error
    mask[31, 5:10] = 6
    Image.fromarray(mask).save(tmp_path / "annotations" / "training" / "a.png")
    layout = detect_layout(tmp_path)
    assert (layout.num_classes, layout.reduce_zero_label) == (150, True)
    _, labels = SegmentationFolder(tmp_path, "training", layout).read(0)
    assert labels[10, 0] == IGNORE and labels[10, 30] == 149 and labels[0, 0] == 0
    assert labels[31, 0] == IGNORE and labels[31, 5] == 5
    _, labels = SegmentationFolder(tmp_path, "training", detect_layout(tmp_path, ignore_index=5)).read(0)
    assert labels[31, 5] == IGNORE and labels[10, 0] == IGNORE and labels[10, 30] == 149  # --ignore-index: reduced


def test_bad_masks_are_reported(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    Image.new("RGB", (40, 32)).save(tmp_path / "images" / "train" / "a.png")
    Image.new("RGB", (40, 32)).save(tmp_path / "images" / "train" / "b.png")
    Image.fromarray(np.full((32, 40), 7, np.uint8)).save(tmp_path / "annotations" / "train" / "a.png")
    layout = detect_layout(tmp_path, 5)
    with pytest.raises(DatasetError, match=r"no mask for 1 image\(s\): \['b.png'\]"):
        SegmentationFolder(tmp_path, "train", layout)
    (tmp_path / "images" / "train" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"a.png: label values \[7\] are neither classes \(0..4\)"):
        SegmentationFolder(tmp_path, "train", layout).read(0)
    Image.fromarray(np.zeros((16, 40), np.uint8)).save(tmp_path / "annotations" / "train" / "a.png")
    with pytest.raises(DatasetError, match="mask of shape"):
        SegmentationFolder(tmp_path, "train", layout).read(0)
    with pytest.raises(DatasetError, match="number of classes"):
        detect_layout(tmp_path)


def test_metrics_on_a_hand_computed_case():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])
    matrix = confusion(prediction, target, 4)
    assert matrix.sum() == 7  # the ignored pixel is not counted
    result = scores(matrix)
    # class 0: hit 1, target 2, predicted 2 -> IoU 1/3; class 1: hits 2, target 3, predicted 3 -> 2/4; class 2:
    # 1 / (2 + 1 - 1) = 1/2; class 3: predicted once, never a target -> IoU 0 (counted); accuracy only over
    # classes that occur in the targets.
    assert result["IoU"][:3] == pytest.approx([100 / 3, 50, 50]) and result["IoU"][3] == 0
    assert result["mIoU"] == pytest.approx((100 / 3 + 50 + 50 + 0) / 4)
    assert result["mAcc"] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert result["aAcc"] == pytest.approx(100 * 4 / 7)
    assert math.isnan(scores(confusion(prediction[:, :1], target[:, :1], 5))["IoU"][4])


def test_eval_size_rounds_to_multiples_of_32():
    assert eval_size(360, 480) == [512, 672] and eval_size(512, 2048) == [512, 2048]
    assert all(side % 32 == 0 for side in eval_size(333, 777))


@pytest.fixture
def small_camvid(camvid, tmp_path):
    data = tmp_path / "camvid"
    for split, count in (("train", 8), ("val", 3)):
        for kind in ("images", "annotations"):
            (data / kind / split).mkdir(parents=True)
        for image in sorted((camvid / "images" / split).iterdir())[:count]:
            shutil.copy(image, data / "images" / split)
            shutil.copy(camvid / "annotations" / split / image.name, data / "annotations" / split)
    (data / "classes.txt").write_text(
        "\n".join(
            ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
        )
    )
    return data


SMALL_RUN = [
    "--model",
    TINY_FPN,
    "--ignore-index",
    "11",
    "--batch-size",
    "4",
    "--crop-size",
    "128",
    "--scale",
    "512",
    "128",
    "--num-workers",
    "0",
    "--no-progress",
]


@pytest.mark.slow  # end to end through the engine, as classification's default tests are
def test_train_eval_resume_and_pictures(small_camvid, tmp_path, capsys):
    data = small_camvid
    common = SMALL_RUN
    common = [*common, "--eval-every", "2"]
    assert main(["train", str(data), "--output", str(tmp_path / "run"), "--iterations", "4", *common]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4] and {"mIoU", "mAcc", "aAcc"} <= set(records[-1])
    assert [r["epoch"] for r in records] == [1, 2]  # 8 images, batches of 4: an epoch is 2 iterations
    short = ["--output", str(tmp_path / "short"), "--iterations", "4", "--stop-after", "2"]
    assert main(["train", str(data), *short, *common]) == 0  # as if the job were killed after iteration 2
    assert len((tmp_path / "short" / "metrics.jsonl").read_text().splitlines()) == 1
    assert main(["train", "--resume", str(tmp_path / "short")]) == 0
    straight, resumed = (
        load_file(tmp_path / "run" / "last.safetensors"),
        load_file(tmp_path / "short" / "last.safetensors"),
    )
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    capsys.readouterr()
    checkpoint = str(tmp_path / "run" / "last.safetensors")
    evaluate = ["eval", str(data), "--model", TINY_FPN, "--checkpoint", checkpoint]  # its ignore index: recorded
    assert main([*evaluate, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # eval folds the backbone, training evaluates the literal modules: a few of the tiny model's near-tied pixels may
    # flip (measured: 3e-5 points); a wrong scale, crop or ignore index moves the figure by whole points
    assert result["mIoU"] == pytest.approx(records[-1]["mIoU"], abs=1e-3) and result["images"] == 3
    assert set(result["IoU"]) >= {"sky", "road", "car"}
    confusion = result["confusion"]  # --json prints what eval.json holds
    assert confusion["rows"] == confusion["columns"] == list(result["IoU"]) and len(confusion["matrix"]) == 11
    matrix = np.array(confusion["matrix"])
    assert 0 < matrix.sum() <= 3 * 360 * 480 and matrix.diagonal().sum() / matrix.sum() == pytest.approx(
        result["aAcc"] / 100, abs=1e-6
    )
    assert main([*evaluate, "--tta"]) == 0
    assert "multi-scale + flip" in capsys.readouterr().out
    photo = data / "images" / "val" / sorted(p.name for p in (data / "images" / "val").iterdir())[0]
    assert (
        main(
            [
                "segment",
                str(photo),
                "--model",
                TINY_FPN,
                "--checkpoint",
                checkpoint,
                "--output",
                str(tmp_path / "pictures"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    overlay, mask = np.asarray(Image.open(out["overlay"])), np.asarray(Image.open(out["mask"]))
    assert mask.shape == (360, 480, 3)  # a colour per class, and nothing else
    assert overlay.shape[1] == 480 and overlay.shape[0] > 360  # the photo, then its legend
    legend = overlay[360:].reshape(-1, 3)
    assert (legend == 255).all(1).mean() > 0.5 and (legend < 100).all(1).any()  # white, with dark names
    colours, counts = np.unique(mask.reshape(-1, 3), axis=0, return_counts=True)
    shown = [colour for colour in colours[counts.argsort()[::-1]][: len(out["classes"])]]
    assert all((legend == colour).all(1).sum() > 50 for colour in shown)  # a swatch for each class named
    # segment folds the backbone by default; the plain one paints the same classes
    assert (
        main(
            [
                "segment",
                str(photo),
                "--model",
                TINY_FPN,
                "--checkpoint",
                checkpoint,
                "--output",
                str(tmp_path / "plain"),
                "--no-fuse",
                "--json",
            ]
        )
        == 0
    )
    plain = json.loads(capsys.readouterr().out)
    assert plain["classes"].keys() == out["classes"].keys()
    assert all(abs(plain["classes"][k] - v) < 1e-3 for k, v in out["classes"].items())


@pytest.mark.slow
def test_two_process_training_on_cpu(small_camvid, tmp_path, capsys):
    # Under torchrun on CPU (gloo) the head's BatchNorm must stay per-process: SyncBatchNorm has no CPU kernel.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [
        *torchrun,
        str(Path(__file__).with_name("tiny.py")),  # the command line, with the tests' models registered
        "train",
        str(small_camvid),
        "--output",
        str(tmp_path / "ddp"),
        "--iterations",
        "2",
        *SMALL_RUN,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done:") == 1  # the summary comes from the main process only
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    checkpoint = tmp_path / "ddp" / "last.safetensors"
    # eval shares the images out between the processes and reports what one process would
    evaluate = [
        "eval",
        str(small_camvid),
        "--model",
        TINY_FPN,
        "--checkpoint",
        str(checkpoint),
        "--ignore-index",
        "11",
        "--json",
    ]
    done = subprocess.run(
        [*torchrun, str(Path(__file__).with_name("tiny.py")), *evaluate],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shared = json.loads(done.stdout)  # one line: only the main process prints
    capsys.readouterr()
    assert main(evaluate) == 0
    alone = json.loads(capsys.readouterr().out)
    assert shared["images"] == alone["images"] == 3 and shared["mIoU"] == pytest.approx(alone["mIoU"], abs=1e-6)


def test_dense_eval_needs_trained_weights(tmp_path, capsys):
    # --pretrained would only initialise the backbone; evaluating a random head would report noise as a result.
    for name in ("fpn_poolformer_s12", "retinanet_poolformer_s12"):
        assert main(["eval", str(tmp_path), "--model", name, "--pretrained"]) == 2
        assert "pass --checkpoint FILE" in capsys.readouterr().err


@pytest.mark.slow
def test_iterations_stop_where_asked_even_inside_an_epoch(small_camvid, tmp_path):
    run = tmp_path / "run"
    # 8 images in batches of 4: 2 iterations an epoch; 3 iterations end inside the second epoch.
    assert main(["train", str(small_camvid), "--output", str(run), "--iterations", "3", *SMALL_RUN]) == 0
    state = torch.load(run / "last.state.pt", weights_only=True)
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {3}  # AdamW stepped exactly 3 times, none at a learning rate of 0 past the schedule
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [3] and records[0]["epoch"] == 1.5


@pytest.mark.slow
def test_an_iteration_run_extends_from_the_step_it_reached(small_camvid, tmp_path, capsys):
    run = tmp_path / "run"
    logged = ["--log-every", "1"]
    assert main(["train", str(small_camvid), "--output", str(run), "--iterations", "3", *SMALL_RUN, *logged]) == 0
    # The poly decay ended at a learning rate of 0: extending it as it is would train at 0, so the user chooses.
    assert main(["train", "--resume", str(run), "--iterations", "5", "--no-progress"]) == 2
    assert "ends at a learning rate of 0, so iterations 4-5 would not change" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--iterations", "5", "--no-progress", "--schedule-extend"]) == 0
    assert "the poly decay now spans all 5 iterations" in capsys.readouterr().out
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in steps] == [1, 2, 3, 4, 5]
    assert steps[2]["lr"] == poly(2, 2e-4, 3, 0.9) and steps[3]["lr"] == poly(3, 2e-4, 5, 0.9) > 0
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {5}  # no step skipped or repeated
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [3, 5]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--iterations", "6", "--stop-after", "4", "--schedule-extend"]) == 0
    assert "already at iteration 5, beyond --stop-after 4; nothing to do" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2  # once a TypeError
    assert "a segmentation run, which is extended with --iterations, not --epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_upernet_trains_with_its_auxiliary_head_and_recipe(small_camvid, tmp_path):
    """UperNet's recipe is its own (160k iterations, AdamW 6e-5, weight decay 0.01, poly power 1, 1500 warm-up
    iterations, the auxiliary loss at 0.4), recorded in config.json; the auxiliary head trains and inference never
    runs it."""
    run = tmp_path / "run"
    flags = [flag if flag != TINY_FPN else TINY_UPERNET for flag in SMALL_RUN]
    flags += ["--crop-size", "64", "--scale", "256", "64"]  # its 512-channel head at stride 4: small images
    assert main(["train", str(small_camvid), "--output", str(run), "--iterations", "2", *flags]) == 0
    recipe = json.loads((run / "config.json").read_text())["recipe"]
    assert (recipe["lr"], recipe["weight_decay"], recipe["power"], recipe["warmup_iterations"]) == (
        6e-5,
        0.01,
        1.0,
        1500,
    )
    assert recipe["aux_weight"] == 0.4
    trained = load_file(run / "last.safetensors")
    fresh = metaformer.create_model(TINY_UPERNET).state_dict()
    assert not torch.equal(trained["aux_head.classifier.weight"], fresh["aux_head.classifier.weight"])
    model = metaformer.create_model(TINY_UPERNET, checkpoint=run / "last.safetensors").eval()
    calls = []
    model.aux_head.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 11, 64, 96) and not calls
    model.train()
    outputs = model(torch.randn(2, 3, 64, 96))
    assert set(outputs) == {"out", "aux"} and outputs["aux"].shape == (2, 11, 64, 96) and calls
    from metaformer.engine.schedules import warmed_up

    assert warmed_up(1.0, 0, 1500) == pytest.approx(1e-6) and warmed_up(1.0, 750, 1500) == pytest.approx(0.5, abs=1e-6)
    assert warmed_up(0.5, 1500, 1500) == 0.5
