"""RetinaNet and Mask R-CNN: the paper's parameter counts, real COCO files, training, COCO evaluation, pictures."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_DIR
from PIL import Image
from safetensors.torch import load_file
from tiny import TINY_MASK_RCNN, TINY_RETINANET

import metaformer
from metaformer.cli import main
from metaformer.errors import DatasetError
from metaformer.tasks.detection.data import CocoDetection, coco_split

PARAMS = {  # the paper's Table 4, with 80 classes
    "retinanet_poolformer_s12": 21.7,
    "retinanet_poolformer_s24": 31.1,
    "retinanet_poolformer_s36": 40.6,
    "mask_rcnn_poolformer_s12": 31.6,
    "mask_rcnn_poolformer_s24": 41.0,
    "mask_rcnn_poolformer_s36": 50.5,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    model = metaformer.create_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - PARAMS[name]) <= 0.3


@pytest.mark.parametrize("name", [TINY_RETINANET, pytest.param(TINY_MASK_RCNN, marks=pytest.mark.slow)])
def test_forward_backward_on_odd_sizes(name):
    model = metaformer.create_model(name, num_classes=3, min_size=96, max_size=160).train()
    images = [torch.rand(3, 97, 131), torch.rand(3, 120, 71)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 80.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    if name == TINY_MASK_RCNN:
        targets[0]["masks"] = torch.zeros(1, 97, 131, dtype=torch.uint8)
        targets[0]["masks"][0, 12:80, 10:60] = 1
        targets[1]["masks"] = torch.zeros(0, 120, 71, dtype=torch.uint8)
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.body.stem.proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and outputs[0]["boxes"].shape[-1] == 4


@pytest.fixture
def coco():
    root = DATA_DIR / "coco-mini"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


def test_reads_real_coco_with_masks_and_crowds(coco):
    images, annotations = coco_split(coco, "train2017")
    dataset = CocoDetection(images, annotations, masks=True, background=True, train=False)
    assert len(dataset) == 130 and len(dataset.labels) == 80 and dataset.labels[0] == "person"
    crowded = next(i for i, image_id in enumerate(dataset.ids) if dataset.coco.getAnnIds(imgIds=image_id, iscrowd=True))
    image, target = dataset[crowded]
    image_id = dataset.ids[crowded]
    plain = dataset.coco.getAnnIds(imgIds=image_id, iscrowd=False)
    assert len(target["labels"]) <= len(plain) and target["labels"].min() >= 1  # crowds left out; 0 is background
    assert target["masks"].shape[1:] == image.shape[1:] and target["masks"].shape[0] == len(target["labels"])
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    box = target["boxes"][0]
    assert target["masks"][0].any() and box[2] > box[0] and box[3] > box[1]


def write_subset(coco, tmp_path, train: int = 4, val: int = 2, empty: bool = True):
    """A tiny COCO dataset made of real images and annotations (plus one image without objects)."""
    for split, count in (("train2017", train), ("val2017", val)):
        source = json.loads((coco / "annotations" / f"instances_{split}.json").read_text())
        with_objects = [i for i in source["images"] if any(a["image_id"] == i["id"] for a in source["annotations"])]
        images = with_objects[:count]
        folder = tmp_path / "images" / split
        folder.mkdir(parents=True)
        for info in images:
            (folder / info["file_name"]).symlink_to(coco / "images" / split / info["file_name"])
        if empty and split == "train2017":
            Image.new("RGB", (64, 48), (90, 120, 200)).save(folder / "sky.jpg")
            images = [*images, {"id": 999_999_999, "file_name": "sky.jpg", "width": 64, "height": 48}]
        ids = {i["id"] for i in images}
        subset = {**source, "images": images, "annotations": [a for a in source["annotations"] if a["image_id"] in ids]}
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(subset))
    return tmp_path


def test_bad_annotations(coco, tmp_path):
    data = write_subset(coco, tmp_path / "data")
    annotations = data / "annotations" / "instances_train2017.json"
    content = json.loads(annotations.read_text())
    content["annotations"][0]["category_id"] = 1000
    annotations.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=f"annotation {content['annotations'][0]['id']} has unknown category 1000"):
        CocoDetection(*coco_split(data, "train2017"), masks=False, background=False, train=False)
    content["annotations"][0]["category_id"] = 1
    annotations.write_text(json.dumps(content))
    (data / "images" / "train2017" / "sky.jpg").unlink()
    with pytest.raises(
        DatasetError, match=r"1 image\(s\) listed in instances_train2017.json are missing: \['sky.jpg'\]"
    ):
        CocoDetection(*coco_split(data, "train2017"), masks=False, background=False, train=False)
    with pytest.raises(DatasetError, match="expected annotations/instances_test2017.json"):
        coco_split(data, "test2017")


@pytest.mark.slow  # end to end through the engine, as classification's default tests are
@pytest.mark.parametrize("name", [TINY_RETINANET, TINY_MASK_RCNN])
def test_train_resume_eval_and_detect(name, coco, tmp_path, capsys):
    data = write_subset(coco, tmp_path / "data")
    epochs = 2 if name == TINY_RETINANET else 1  # the engine's epochs are checked once; Mask R-CNN is slow on CPU
    common = [
        "--model",
        name,
        "--epochs",
        str(epochs),
        "--batch-size",
        "2",
        "--min-size",
        "96",
        "--max-size",
        "128",
        "--warmup-iters",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main(["train", str(data), "--output", str(tmp_path / "run"), *common]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1)) and "AP50" in records[-1]
    assert ("mask_AP" in records[-1]) == (name == TINY_MASK_RCNN)
    if name == TINY_RETINANET:  # the engine resumes every task alike; Mask R-CNN's own run is slow on CPU
        assert main(["train", str(data), "--output", str(tmp_path / "cut"), "--stop-after", "1", *common]) == 0
        assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
        straight, resumed = (
            load_file(tmp_path / "run" / "last.safetensors"),
            load_file(tmp_path / "cut" / "last.safetensors"),
        )
        assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    checkpoint = str(tmp_path / "run" / "last.safetensors")
    capsys.readouterr()
    evaluate = ["eval", str(data), "--model", name, "--checkpoint", checkpoint]
    assert main([*evaluate, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and result["AP"] == pytest.approx(records[-1]["AP"])
    assert (result["min_size"], result["max_size"]) == (96, 128)  # the size it was trained at, from the checkpoint
    assert {"AR1", "AR10", "AR100", "ARs", "ARm", "ARl"} <= set(result)  # pycocotools' whole table
    kinds = ["bbox", "segm"] if name == TINY_MASK_RCNN else ["bbox"]
    assert sorted(result["per_class"]) == kinds and set(result["per_class"]["bbox"]) <= set(
        metaformer.create_model(name, checkpoint=checkpoint).labels
    )
    if name == TINY_RETINANET:  # the printed table, once
        assert main([*evaluate, "--no-progress"]) == 0
        table = capsys.readouterr().out
        assert "AR100" in table and "96/128 px" in table
    photo = next((data / "images" / "val2017").iterdir())
    detect = ["detect", str(photo), "--model", name, "--checkpoint", checkpoint, "--min-size", "96"]
    detect += ["--max-size", "128"]
    # At the model's own floor: below it, hundreds of near-tied random boxes would decide which make the cut of 300
    assert main([*detect, "--score-threshold", "0.05", "--output", str(tmp_path / "pictures"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Image.open(out["picture"]).size == Image.open(photo).size
    # detect folds the backbone by default; the plain one finds the same objects
    assert main([*detect, "--score-threshold", "0.05", "--output", str(tmp_path / "plain"), "--no-fuse", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["detections"]
    ours, theirs = (sorted((d["label"], d["score"]) for d in found) for found in (out["detections"], plain))
    assert [label for label, _ in ours] == [label for label, _ in theirs]
    assert [score for _, score in ours] == pytest.approx([score for _, score in theirs], abs=1e-3)
    assert all(d["label"] in metaformer.create_model(name, checkpoint=checkpoint).labels for d in out["detections"])


def test_list_and_info_show_the_dense_models(capsys):
    assert main(["list", "mask_rcnn"]) == 0
    assert "mask_rcnn_poolformer_s36" in capsys.readouterr().out
    assert main(["info", "retinanet_poolformer_s12", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "detection" and info["num_classes"] == 80 and round(info["params"] / 1e6, 1) == 21.7


class GroundTruthDetector(torch.nn.Module):
    """Answers each image with its own annotations: a perfect detector, to check the COCO evaluation path (our
    conversion to COCO results: xywh boxes, category ids, RLE masks) gives AP = 100."""

    def __init__(self, dataset: CocoDetection, task: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # evaluation reads the device from a parameter
        self.answers = [dataset[i][1] for i in range(len(dataset))]
        self.task = task

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        outputs = []
        for _ in images:
            target = self.answers.pop(0)
            found = {
                "boxes": target["boxes"].as_subclass(torch.Tensor),
                "labels": target["labels"],
                "scores": torch.ones(len(target["labels"])),
            }
            if "masks" in target:
                found["masks"] = target["masks"].as_subclass(torch.Tensor)[:, None].float()
            outputs.append(found)
        return outputs


@pytest.mark.parametrize("task", ["detection", "instance_segmentation"])
def test_perfect_detections_score_100(task, coco, tmp_path):
    from metaformer.engine.distributed import DistributedContext
    from metaformer.tasks.detection.metrics import coco_evaluate
    from metaformer.tasks.detection.task import coco_dataset

    data = write_subset(coco, tmp_path / "data", train=1, val=6, empty=False)
    instance = task == "instance_segmentation"
    dataset = coco_dataset(str(data), "val2017", instance, train=False)
    metrics = coco_evaluate(GroundTruthDetector(dataset, task), dataset, DistributedContext())
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AP50"] == pytest.approx(100.0)
    if instance:
        assert metrics["mask_AP"] > 95  # polygons rasterised and re-encoded as RLE lose a little at the edges
