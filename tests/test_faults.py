"""The bad-input corpus: every input that once crashed, hung, lost data or passed silently gets one clear error."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, slow_but
from PIL import Image

import metaformer
from metaformer.cli import main
from metaformer.errors import CheckpointError, DatasetError


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "two.safetensors"
    model = metaformer.create_model("poolformer_s12", num_classes=2)
    model.reset_classifier(2, labels=["cat", "dog"])
    return metaformer.save_checkpoint(model, path)


def error_of(capsys, *args: str, code: int = 1) -> str:
    assert main(list(args)) == code
    return capsys.readouterr().err


@pytest.fixture
def no_hang():
    """Fail instead of hanging forever (a FIFO opened for reading blocks until someone writes)."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("hung"))
    signal.alarm(120)
    yield
    signal.alarm(0)


# ------------------------------------------------------------------------------------------------ convert


def test_convert_never_overwrites_without_force(classifier, tmp_path, capsys):
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"the user's own file")
    error = error_of(capsys, "convert", str(classifier), str(target), "--to", "safetensors")
    assert "mine.safetensors exists; pass --force" in error and target.read_bytes() == b"the user's own file"
    assert main(["convert", str(classifier), str(target), "--to", "safetensors", "--force"]) == 0
    assert metaformer.create_model("poolformer_s12", checkpoint=target).labels == ("cat", "dog")
    folder = tmp_path / "hf"
    assert main(["convert", str(classifier), str(folder), "--to", "hf"]) == 0
    assert "exists" in error_of(capsys, "convert", str(classifier), str(folder), "--to", "hf")


@pytest.mark.parametrize(
    "to, name, says",
    [
        ("safetensors", "x.txt", "written to .safetensors files, not '.txt'"),  # once wrote a pickle
        ("safetensors", "x.pth", "written to .safetensors files, not '.pth'"),
        ("official", "x.safetensors", "written to .pth.tar or .pth"),
        ("hf", "x.safetensors", "is a folder"),
        ("timm", "x.txt", "files, not '.txt' (or a folder, named without a suffix)"),
    ],
)
def test_convert_writes_what_to_names_or_refuses(to, name, says, classifier, tmp_path, capsys):
    assert says in error_of(capsys, "convert", str(classifier), str(tmp_path / name), "--to", to, code=2)
    assert not (tmp_path / name).exists()


def test_convert_takes_dense_checkpoints(tmp_path):
    model = metaformer.create_model("retinanet_poolformer_s12", num_classes=3, labels=["a", "b", "c"], min_size=320)
    source = metaformer.save_checkpoint(model, tmp_path / "det.safetensors")
    out = metaformer.convert_checkpoint(source, tmp_path / "copy.safetensors", "metaformer")
    again = metaformer.create_model("retinanet_poolformer_s12", checkpoint=out, strict=True)
    assert again.labels == ("a", "b", "c") and again.input_settings() == {"min_size": 320, "max_size": 1333}
    with pytest.raises(metaformer.ConfigError, match="saved in our format .* only"):
        metaformer.convert_checkpoint(source, tmp_path / "det.pth.tar", "official")


def test_convert_refuses_a_file_that_lacks_layers(tmp_path):
    from safetensors.torch import save_file

    weights = metaformer.create_model("poolformer_s12").state_dict()
    missing = next(k for k in weights if k.endswith("mlp.fc1.weight"))
    save_file({k: v for k, v in weights.items() if k != missing}, tmp_path / "part.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(missing)):  # once written out with random weights there
        metaformer.convert_checkpoint(tmp_path / "part.safetensors", tmp_path / "out.pth", "official", "poolformer_s12")
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("name", ["fpn_poolformer_s12", "retinanet_poolformer_s12", "mask_rcnn_poolformer_s12"])
def test_an_in_memory_dense_state_dict_keeps_its_classes(name):
    model = metaformer.create_model(name, num_classes=7)
    again = metaformer.create_model(name, checkpoint=model.state_dict(), strict=True)  # once: the default classes
    assert again.num_classes == 7


@pytest.mark.parametrize(
    "name",
    slow_but(
        ["poolformer_s12", "fpn_poolformer_s12", "retinanet_poolformer_s12", "mask_rcnn_poolformer_s12"],
        {"poolformer_s12", "fpn_poolformer_s12"},
    ),
)
def test_save_checkpoint_takes_every_model_create_model_returns(name, tmp_path):
    model = metaformer.create_model(name)
    path = metaformer.save_checkpoint(model, tmp_path / f"{name}.safetensors")
    again = metaformer.create_model(name, checkpoint=path, strict=True)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    if name == "poolformer_s12":
        features = metaformer.create_model(name, features_only=True)
        metaformer.save_checkpoint(features, tmp_path / "features.safetensors")


# --------------------------------------------------------------------------------------- files and pickles


def test_a_fifo_is_refused_not_waited_on(classifier, imagenet_samples, tmp_path, capsys, no_hang):
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)
    code = main(
        [
            "predict",
            str(fifo),
            str(imagenet_samples[0]),
            "--model",
            "poolformer_s12",
            "--checkpoint",
            str(classifier),
            "--json",
        ]
    )
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and results[0] == {"path": str(fifo), "error": "a FIFO (named pipe), not a regular file"}
    assert "topk" in results[1]
    checkpoint_fifo = tmp_path / "weights.pth"
    os.mkfifo(checkpoint_fifo)
    error = error_of(
        capsys, "predict", str(imagenet_samples[0]), "--model", "poolformer_s12", "--checkpoint", str(checkpoint_fifo)
    )
    assert "weights.pth: a FIFO (named pipe), not a regular file" in error


def test_a_symbolic_link_loop_is_called_one(classifier, tmp_path, capsys):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    assert main(["predict", str(loop), "--model", "poolformer_s12", "--checkpoint", str(classifier), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "a symbolic link loop"
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "gone.jpg"),
                "--model",
                "poolformer_s12",
                "--checkpoint",
                str(classifier),
                "--json",
            ]
        )
        == 1
    )
    assert json.loads(capsys.readouterr().out)["error"] == "no such file (a broken symbolic link)"


class RunsCode:
    """What a malicious checkpoint holds: unpickling it would call os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain pickle", "namespace"])
def test_files_holding_python_objects_are_refused_as_such(kind, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pth"
    content = {"state_dict": {"stem.proj.weight": torch.zeros(1)}, "payload": RunsCode(marker)}
    if kind == "zip":
        torch.save(content, path)
    elif kind == "legacy":
        torch.save(content, path, _use_new_zipfile_serialization=False)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps(content, protocol=4))
    else:
        from argparse import Namespace

        torch.save({"state_dict": {}, "args": Namespace(lr=0.1)}, path)
    with pytest.raises(
        CheckpointError, match="holds Python objects other than tensors, and unpickling them could run code"
    ) as raised:
        metaformer.create_model("poolformer_s12", checkpoint=path)
    assert ("Namespace" if kind == "namespace" else "system") in str(raised.value)
    assert not marker.exists()


def test_an_in_memory_state_dict_is_not_printed_whole():
    state_dict = metaformer.create_model("poolformer_s12").state_dict()
    with pytest.raises(CheckpointError) as raised:
        metaformer.create_model("fpn_poolformer_s24", checkpoint=state_dict)
    assert "the state_dict" in str(raised.value) and len(str(raised.value)) < 2000


# ------------------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "args, says",
    [
        (
            [
                "train",
                "data",
                "--model",
                "fpn_poolformer_s12",
                "--ema",
                "--recipe",
                "finetune",
                "--mixup",
                "0",
                "--epochs",
                "3",
            ],
            "--epochs, --recipe, --mixup, --ema are not used by train for fpn_poolformer_s12, a "
            "segmentation model (settings of other tasks: --epochs: classification and detection",
        ),
        (["train", "data", "--model", "poolformer_s12", "--iterations", "100"], "--iterations is not used by train"),
        (["train", "data", "--model", "retinanet_poolformer_s12", "--crop-scale", "0.3", "1"], "--crop-scale is not"),
        (["train", "--resume", "runs/x", "--lr", "0.1"], "--lr cannot change"),
        (["eval", "data", "--model", "poolformer_s12", "--checkpoint", "x", "--tta"], "--tta is not used by eval"),
        (
            ["eval", "data", "--model", "fpn_poolformer_s12", "--checkpoint", "x", "--min-size", "9"],
            "--min-size is not",
        ),
        (["eval", "data", "--model", "fpn_poolformer_s12", "--checkpoint", "x", "--batch-size", "4"], "--batch-size"),
        (["predict", "x.jpg", "--model", "fpn_poolformer_s12", "--checkpoint", "x"], "use `metaformer segment`"),
        (["segment", "x.jpg", "--model", "poolformer_s12", "--checkpoint", "x"], "segment does not take"),
        (["detect", "x.jpg", "--model", "fpn_poolformer_s12", "--checkpoint", "x"], "detect does not take"),
        (["benchmark", "--model", "fpn_poolformer_s12"], "benchmark does not take"),
        (["info", "fpn_poolformer_s12", "--image-size", "256"], "--image-size counts a classifier's MACs"),
        (["train", "data", "--model", "poolformer_s12", "--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_flags_the_task_does_not_use_are_refused(args, says, capsys):
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and says in error and error.count("\n") == 1


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--clip-grad", "0", "a number > 0"),  # once ignored; a negative value reversed the gradients
        ("--lr", "-0.001", "a number > 0"),
        ("--weight-decay", "-0.05", "a number >= 0"),
        ("--label-smoothing", "1.5", "a probability from 0 to 1"),
        ("--random-erasing", "nan", "a probability from 0 to 1"),
        ("--drop-path", "-0.1", "a probability from 0 to 1"),
        ("--mixup", "x", "a number >= 0"),
    ],
)
def test_numbers_out_of_range_are_refused(flag, value, says, capsys):
    with pytest.raises(SystemExit) as stopped:  # argparse's own refusal: usage, then the one-line error
        main(["train", "data", "--model", "poolformer_s12", flag, value])
    error = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"argument {flag}: must be {says}" in error


def test_detection_decays_follow_the_run_length_and_stay_put_when_extended():
    from metaformer.tasks import extended
    from metaformer.tasks.detection.recipe import DetectionRecipe

    assert DetectionRecipe().resolved_decay_epochs() == (8, 11)
    assert DetectionRecipe(epochs=24).resolved_decay_epochs() == (16, 22)  # mmdet's 2x schedule
    longer = extended(DetectionRecipe(), "detection", {"epochs": 24}, "run")
    assert longer.epochs == 24 and longer.resolved_decay_epochs() == (8, 11)
    with pytest.raises(metaformer.ConfigError, match="a detection run, which is extended with --epochs"):
        extended(DetectionRecipe(), "detection", {"iterations": 10}, "run")


def test_only_our_errors_become_one_line_others_are_bugs(monkeypatch, capsys):
    from metaformer.cli import models

    monkeypatch.setattr(models, "model_info", lambda *a: (_ for _ in ()).throw(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(["info", "poolformer_s12"])
    monkeypatch.setattr(models, "model_info", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied", "f")))
    assert main(["info", "poolformer_s12"]) == 1
    assert capsys.readouterr().err == "error: [Errno 13] denied: 'f'\n"


def test_the_default_number_of_workers_fits_the_machine(monkeypatch):
    from metaformer.engine import default_num_workers

    cores = len(os.sched_getaffinity(0))
    assert 0 <= default_num_workers() <= min(4, cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # torchrun with one process per core
    assert default_num_workers() == 1


# ---------------------------------------------------------------------------------------------- datasets


def folder_of(root: Path, classes: dict[str, int], photos: list[Path]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for photo in photos[:count]:
            (root / name / photo.name).symlink_to(photo)
    return root


def test_a_single_class_warns_in_eval_and_stops_training(classifier, imagenet_samples, tmp_path, capsys):
    data = tmp_path / "data"
    folder_of(data / "val", {"cat": 3}, imagenet_samples)
    with pytest.warns(UserWarning, match="single class folder \\(cat\\): top-1 counts how often"):
        assert (
            main(
                [
                    "eval",
                    str(data),
                    "--model",
                    "poolformer_s12",
                    "--checkpoint",
                    str(classifier),
                    "--json",
                    "--num-workers",
                    "0",
                ]
            )
            == 0
        )
    folder_of(data / "train", {"cat": 4}, imagenet_samples)
    error = error_of(
        capsys,
        "train",
        str(data),
        "--model",
        "poolformer_s12",
        "--output",
        str(tmp_path / "r"),
        "--batch-size",
        "2",
        "--num-workers",
        "0",
    )
    assert "single class folder (cat): a classifier needs at least two classes" in error


@pytest.fixture
def coco_subset(tmp_path) -> Path:
    from test_detection import write_subset

    root = DATA_DIR / "coco-mini"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    return write_subset(root, tmp_path / "coco", train=2, val=2, empty=False)


def test_a_box_without_area_is_an_error_naming_its_annotation(coco_subset):
    from metaformer.tasks.detection.task import coco_dataset

    annotations = coco_subset / "annotations" / "instances_val2017.json"
    content = json.loads(annotations.read_text())
    content["annotations"][1]["bbox"][3] = 0
    annotations.write_text(json.dumps(content))
    with pytest.raises(
        DatasetError,
        match=f"annotation {content['annotations'][1]['id']} .* has a box of width "
        r"[\d.]+ and height 0",
    ):
        coco_dataset(str(coco_subset), "val2017", instance=False, train=False)


def test_no_annotations_warns_and_ap_is_undefined_not_zero(coco_subset, tmp_path, capsys):
    annotations = coco_subset / "annotations" / "instances_val2017.json"
    content = json.loads(annotations.read_text())
    annotations.write_text(json.dumps({**content, "annotations": []}))
    model = metaformer.create_model("retinanet_poolformer_s12", min_size=96, max_size=128)
    weights = metaformer.save_checkpoint(model, tmp_path / "det.safetensors")
    evaluate = ["eval", str(coco_subset), "--model", "retinanet_poolformer_s12", "--checkpoint", str(weights)]
    with pytest.warns(UserWarning, match="no object annotations at all"):
        assert main([*evaluate, "--json", "--num-workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["AP"] is None and result["AR100"] is None and result["images"] == 2
    assert main([*evaluate, "--num-workers", "0", "--no-progress"]) == 0
    assert "AP n/a" in capsys.readouterr().out


def test_an_unreadable_detection_image_is_left_out_not_counted_as_missed(tmp_path):
    from test_detection import GroundTruthDetector, write_subset

    from metaformer.engine.distributed import DistributedContext
    from metaformer.tasks.detection.metrics import coco_evaluate
    from metaformer.tasks.detection.task import coco_dataset

    root = DATA_DIR / "coco-mini"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    data = write_subset(root, tmp_path / "coco", train=1, val=4, empty=False)
    dataset = coco_dataset(str(data), "val2017", instance=False, train=False)
    detector = GroundTruthDetector(dataset, "detection")
    broken = dataset.images / dataset.coco.imgs[dataset.ids[1]]["file_name"]
    broken.unlink()  # a link to the shared data: replace it, never write through it
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    del detector.answers[1]
    # read in a DataLoader worker, whose ImageLoadError once came back as a RuntimeError
    metrics = coco_evaluate(detector, dataset, DistributedContext(), batch_size=1, num_workers=1)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["images"] == 3
    assert len(metrics["errors"]) == 1 and metrics["errors"][0].startswith(str(broken))


def test_detection_eval_with_no_readable_image_fails_and_says_zero(coco_subset, tmp_path, capsys):
    for image in (coco_subset / "images" / "val2017").iterdir():
        image.unlink()  # a link to the shared data: replace it, never write through it
        image.write_bytes(b"\xff\xd8 not a jpeg")
    model = metaformer.create_model("retinanet_poolformer_s12", min_size=96, max_size=128)
    weights = metaformer.save_checkpoint(model, tmp_path / "det.safetensors")
    capsys.readouterr()
    code = main(
        [
            "eval",
            str(coco_subset),
            "--model",
            "retinanet_poolformer_s12",
            "--checkpoint",
            str(weights),
            "--json",
            "--num-workers",
            "0",
        ]
    )
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 1 and result["images"] == 0 and result["AP"] is None and len(result["errors"]) == 2
    assert "nothing was evaluated" in captured.err


def bad_mask_dataset(root: Path, camvid: Path) -> Path:
    for split in ("train", "val"):
        for kind in ("images", "annotations"):
            (root / kind / split).mkdir(parents=True)
        for image in sorted((camvid / "images" / split).iterdir())[:4]:
            (root / "images" / split / image.name).symlink_to(image)
            mask = np.array(Image.open(camvid / "annotations" / split / image.name))
            mask[0, 0] = 40  # neither one of the 11 classes nor the ignore value
            Image.fromarray(mask).save(root / "annotations" / split / image.name)
    return root


def test_a_bad_mask_found_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    camvid = DATA_DIR / "camvid"
    if not camvid.is_dir():
        pytest.skip(f"real data not found at {camvid}")
    data = bad_mask_dataset(tmp_path / "data", camvid)
    error = error_of(
        capsys,
        "train",
        str(data),
        "--model",
        "fpn_poolformer_s12",
        "--num-classes",
        "11",
        "--ignore-index",
        "11",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--scale",
        "256",
        "64",
        "--iterations",
        "2",
        "--num-workers",
        "1",
        "--no-progress",
        "--output",
        str(tmp_path / "run"),
    )
    lines = [line for line in error.splitlines() if not line.startswith("warning")]
    assert len(lines) == 1 and "label values [40] are neither classes (0..10) nor the ignore index 11" in lines[0]
    assert "Traceback" not in error and "DataLoader worker" not in error


def test_segmentation_takes_num_classes_on_the_ade20k_layout(tmp_path):
    from metaformer.tasks.segmentation.data import SegmentationFolder, detect_layout

    for split in ("training", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "training" / "a.jpg")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "annotations" / "training" / "a.png")
    layout = detect_layout(tmp_path, num_classes=5)
    assert layout.num_classes == 5 and layout.reduce_zero_label
    with pytest.raises(DatasetError, match=r"label values \[8\] \(after reducing by one.*\) are neither classes"):
        SegmentationFolder(tmp_path, "training", layout).read(0)


def test_every_classifier_has_its_own_drop_path():
    from metaformer.models.zoo import list_models
    from metaformer.tasks.classification.recipe import OFFICIAL, PAPER

    rates = {name: PAPER.resolved(name).drop_path for name in list_models(task="classification")}
    assert rates["poolformer_m48"] == 0.4 and rates["poolformer_s36"] == 0.2 and rates["poolformer_s12_pool5"] == 0.1
    assert rates["caformer_b36"] == 0.6 and rates["randformer_m48"] == 0.3
    assert set(OFFICIAL) <= set(rates)  # every row of the official table names a classifier of the zoo
    with pytest.raises(metaformer.ConfigError, match="unknown model 'convformer_s99'"):
        PAPER.resolved("convformer_s99")  # once silently S12's 0.1
