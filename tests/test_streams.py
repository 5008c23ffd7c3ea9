"""Streamed classification data: WebDataset shards (``wds:``) and Hugging Face datasets read as streams
(``--streaming``), written in each format in the test from real images. An epoch deals every sample once over
processes and loader workers, a run resumes exactly at an epoch's end, evaluation reads every sample once and
scores as the same images in folders, and every wrong input is named."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import save_as_hf_dataset
from safetensors.torch import load_file
from test_train import FAST, subset
from tiny import TINY, TINY_FPN
from torch.utils.data import DataLoader, default_collate

from metaformer.cli import main
from metaformer.data.guarded import GuardedCollate
from metaformer.data.wds import wds_images
from metaformer.tasks.classification.data import ImageFolder

wds = pytest.importorskip("webdataset")
CLASSES = ["airplane", "frog", "truck"]
FLAGS = ["--model", TINY, "--batch-size", "4", "--recipe", "short", "--warmup-epochs", "0", *FAST]


def write_shards(folder: Path, name: str, samples: list[tuple[Path, int]], shards: int) -> None:
    """``samples`` dealt in turn to ``shards`` tar files named after their split, as timm's *-wds datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"cifar3-{name}-{shard:04d}.tar")) as writer:
            for path, label in samples[shard::shards]:
                key = f"{path.parent.name}_{path.stem}"
                writer.write({"__key__": key, "png": path.read_bytes(), "cls": str(label)})


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return subset(tmp_path_factory.mktemp("streams") / "data", CLASSES, train=16, val=6)


@pytest.fixture(scope="module")
def shards(folders, tmp_path_factory) -> Path:
    """The same images as 4 training shards of 12 and 3 validation shards of 6, with classes.txt."""
    root = tmp_path_factory.mktemp("wds") / "cifar3"
    for split, folder, count in (("train", "train", 4), ("validation", "val", 3)):
        write_shards(root, split, ImageFolder(folders / folder, transform=lambda image: image).samples, count)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def fingerprint(image) -> torch.Tensor:  # noqa: ANN001  a PIL image
    """A sample's identity, through the real decoding path: its pixels' hash."""
    return torch.tensor(int.from_bytes(hashlib.sha1(image.tobytes()).digest()[:7], "little"))


def read(stream, workers: int) -> list[int]:  # noqa: ANN001
    loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=GuardedCollate(default_collate))
    return [int(v) for batch in loader for v in batch.data[0]]


def test_an_epoch_deals_every_sample_once_over_processes_and_workers(shards):
    dataset = wds_images(f"wds:{shards}", "train", fingerprint)
    assert len(dataset) == 48 and dataset.classes == CLASSES
    # 2 processes x 2 workers: 4 readers of one 12-sample shard each; 2 x 2 x 3 batches of 4 fill the epoch.
    window = {"seed": 0, "world_size": 2, "batch_size": 4, "batches": 6}
    epoch0 = [read(dataset.for_training(epoch=0, rank=rank, **window), workers=2) for rank in (0, 1)]
    assert all(len(seen) == len(set(seen)) == 24 for seen in epoch0)  # no sample twice on one process
    assert len(set(epoch0[0]) | set(epoch0[1])) == 48  # and none on both: the epoch is the whole set once
    assert epoch0 == [read(dataset.for_training(epoch=0, rank=rank, **window), workers=2) for rank in (0, 1)]
    epoch1 = [read(dataset.for_training(epoch=1, rank=rank, **window), workers=2) for rank in (0, 1)]
    assert epoch1 != epoch0 and set(epoch1[0]) | set(epoch1[1]) == set(epoch0[0]) | set(epoch0[1])
    # Evaluation: 3 shards for 4 readers are read sample by sample in turn, every sample once.
    validation = wds_images(f"wds:{shards}", "validation", fingerprint)
    seen = [read(validation.for_evaluation(rank=rank, world_size=2, batch_size=4), workers=2) for rank in (0, 1)]
    assert sorted(seen[0] + seen[1]) == sorted(set(seen[0] + seen[1])) and len(seen[0] + seen[1]) == 18
    assert validation.deal_warning(2, 2) is not None and dataset.deal_warning(2, 2) is None


def test_wds_trains_resumes_exactly_logs_tensorboard_and_evaluates_as_folders(folders, shards, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", f"wds:{shards}", "--output", str(straight), "--epochs", "2", *FLAGS,
                 "--log", "tensorboard", "--log-every", "4"]) == 0  # fmt: skip
    assert main(["train", f"wds:{shards}", "--output", str(split), "--epochs", "2", "--stop-after", "1", *FLAGS]) == 0
    assert main(["train", "--resume", str(split)]) == 0
    a, b = load_file(straight / "last.safetensors"), load_file(split / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # epoch 2 read the same stream, augmentation included
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["images"] for r in records] == [18, 18] and json.loads((straight / "config.json").read_text())[
        "resolved"]["classes"] == CLASSES  # fmt: skip

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight / "tensorboard"))
    events.Reload()
    top1 = [(e.step, round(e.value, 3)) for e in events.Scalars("metrics/top1")]
    assert top1 == [(12 * (i + 1), round(r["top1"], 3)) for i, r in enumerate(records)]  # 12 steps an epoch
    steps = [json.loads(line) for line in (straight / "steps.jsonl").read_text().splitlines()]
    logged = [(e.step, round(e.value, 4)) for e in events.Scalars("steps/train_loss")]
    assert logged == [(s["step"], round(s["train_loss"], 4)) for s in steps] and len(logged) == 6

    capsys.readouterr()
    checkpoint = str(straight / "last.safetensors")
    scores = []
    for data in (f"wds:{shards}", str(folders)):
        assert main(["eval", data, "--model", TINY, "--checkpoint", checkpoint, "--json", "--num-workers", "0"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0]["top1"] == scores[1]["top1"] and scores[0]["images"] == 18
    assert scores[0]["per_class"] == scores[1]["per_class"]


def test_an_hf_dataset_streamed_trains_and_evaluates(folders, tmp_path, capsys):
    pytest.importorskip("datasets")
    saved = save_as_hf_dataset(folders, tmp_path / "saved", CLASSES)
    run = tmp_path / "run"
    assert main(["train", f"hf:{saved}", "--streaming", "--output", str(run), "--epochs", "1", *FLAGS]) == 0
    record = json.loads((run / "metrics.jsonl").read_text())
    config = json.loads((run / "config.json").read_text())
    assert record["images"] == 18 and config["settings"]["streaming"] and config["resolved"]["steps_per_epoch"] == 12


def test_tensorboard_logging_without_its_package_is_refused_before_training(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: its import fails
    run = tmp_path / "run"
    assert main(["train", str(folders), "--output", str(run), "--log", "tensorboard", *FLAGS]) == 2
    assert "pip install 'metaformer[log]'" in capsys.readouterr().err and not (run / "last.safetensors").exists()


def test_bad_streamed_inputs_are_named(shards, folders, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for tar in shards.glob("*-train-*.tar"):
        (broken / tar.name).symlink_to(tar)
    (broken / "classes.txt").symlink_to(shards / "classes.txt")
    (broken / "cifar3-validation-0000.tar").write_bytes(b"not a tar at all" * 64)
    assert main(["train", f"wds:{broken}", "--output", str(tmp_path / "a"), "--epochs", "1", *FLAGS]) == 1
    assert "cifar3-validation-0000.tar: not a tar file" in capsys.readouterr().err
    assert main(["train", f"wds:{shards}", "--val-split", "test", "--output", str(tmp_path / "b"), *FLAGS]) == 1
    err = capsys.readouterr().err
    assert "no shards of split 'test'" in err and "cifar3-train-0000.tar" in err
    assert main(["train", str(folders), "--streaming", "--output", str(tmp_path / "c"), *FLAGS]) == 1
    assert "--streaming reads an hf: dataset" in capsys.readouterr().err
    assert main(["train", f"wds:{shards}", "--model", TINY_FPN, "--output", str(tmp_path / "d")]) == 2
    assert "hf: and wds: data are for classification" in capsys.readouterr().err


def test_an_unreadable_sample_is_skipped_and_a_sample_without_class_stops(shards, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for tar in shards.glob("*-validation-*.tar"):
        (bad / tar.name).symlink_to(tar)
    (bad / "classes.txt").symlink_to(shards / "classes.txt")
    members = []
    with tarfile.open(shards / "cifar3-train-0000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    first_image = next(m.name for m, _ in members if m.name.endswith(".png"))
    first_class = next(m.name for m, _ in members if m.name.endswith(".cls"))
    with tarfile.open(bad / "cifar3-train-0000.tar", "w") as out:  # its first image truncated
        for member, data in members:
            data = data[:40] if member.name == first_image else data
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    for shard in range(1, 4):
        (bad / f"cifar3-train-{shard:04d}.tar").symlink_to(shards / f"cifar3-train-{shard:04d}.tar")
    assert main(["train", f"wds:{bad}", "--output", str(tmp_path / "a"), "--epochs", "1", *FLAGS]) == 0
    record = json.loads((tmp_path / "a" / "metrics.jsonl").read_text())
    assert record["skipped_images"] == 1
    with tarfile.open(bad / "cifar3-train-0000.tar", "w") as out:  # now without its first class member
        for member, data in members:
            if member.name != first_class:
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))
    assert main(["train", f"wds:{bad}", "--output", str(tmp_path / "b"), "--epochs", "1", *FLAGS]) == 1
    assert "has no cls member" in capsys.readouterr().err


def test_unnamed_imagenet_shards_read_as_wordnet_ids(imagenet_samples, tmp_path):
    """timm's imagenet-1k-wds shards hold class indices alone: 1000 of them are ImageNet's, in WordNet-id order, so
    a pretrained ImageNet model scores them as it scores a folder of WordNet ids."""
    from metaformer.data import imagenet_classes
    from metaformer.tasks.classification.data import class_to_output

    wnids = [wnid for wnid, _ in imagenet_classes()]
    samples = [(path, wnids.index(path.name.split("_")[0])) for path in imagenet_samples[:20]]
    samples.append((imagenet_samples[-1], 999))  # the indices seen reach the last class
    write_shards(tmp_path, "validation", samples, 2)
    dataset = wds_images(f"wds:{tmp_path}/cifar3-validation-{{0000..0001}}.tar", "validation", lambda image: 0)
    assert dataset.classes == wnids and class_to_output(dataset.classes, None, 1000) == list(range(1000))
    labels = sorted(int(label) for batch in read_labels(dataset) for label in batch)
    assert labels == sorted(label for _, label in samples)


def read_labels(dataset) -> list:  # noqa: ANN001
    loader = DataLoader(dataset.for_evaluation(rank=0, world_size=1, batch_size=8), batch_size=None,
                        collate_fn=GuardedCollate(default_collate))  # fmt: skip
    return [batch.data[1].tolist() for batch in loader]


def test_predict_and_embed_read_shards_and_dataset_rows_as_the_files(folders, shards, tmp_path, capsys):
    """Shards' images and a dataset's rows are classified and embedded as the same image files are, named by shard
    and key (or split and row), and a run over them resumes by those names."""
    import metaformer

    datasets = pytest.importorskip("datasets")
    checkpoint = metaformer.save_checkpoint(metaformer.create_model(TINY, num_classes=3), tmp_path / "tiny.safetensors")
    samples = ImageFolder(folders / "val", transform=lambda image: image).samples
    rows = {"image": [str(p) for p, _ in samples], "label": [label for _, label in samples]}
    saved = tmp_path / "saved"
    test = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": test}).save_to_disk(str(saved))
    common = ["--checkpoint", str(checkpoint), "--no-progress", "--num-workers", "0", "--batch-size", "4"]
    outputs = {}
    for name, source in (("files", [str(folders / "val")]), ("wds", [f"wds:{shards}", "--split", "validation"]),
                         ("hf", [f"hf:{saved}", "--split", "test"])):  # fmt: skip
        assert main(["predict", *source, *common, "--output", str(tmp_path / f"{name}.jsonl")]) == 0
        outputs[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    by_file = {f"{Path(r['path']).parent.name}_{Path(r['path']).stem}": r["topk"] for r in outputs["files"]}
    assert {r["path"].rpartition(":")[2]: r["topk"] for r in outputs["wds"]} == by_file and len(by_file) == 18
    assert [r["path"] for r in outputs["hf"]] == [f"hf:{saved}[test][{i}]" for i in range(18)]
    assert [r["topk"] for r in outputs["hf"]] == [by_file[f"{path.parent.name}_{path.stem}"] for path, _ in samples]
    # A run cut to its first 10 lines resumes with the other 8, by name.
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in outputs["wds"][:10]))
    source = [f"wds:{shards}", "--split", "validation"]
    assert main(["predict", *source, *common, "--output", str(partial), "--resume"]) == 0
    assert partial.read_text().splitlines() == (tmp_path / "wds.jsonl").read_text().splitlines()
    embed = ["embed", f"hf:{saved}", "--split", "test", *common[:2], *common[3:]]
    assert main([*embed, "--output", str(tmp_path / "features")]) == 0
    names = (tmp_path / "features" / "files-0-00000.txt").read_text().splitlines()
    assert names == [f"hf:{saved}[test][{i}]" for i in range(18)]
    capsys.readouterr()
    assert main(["predict", str(folders / "val"), "--split", "test", *common]) == 1
    assert "--split and --image-column choose the images of wds: shards" in capsys.readouterr().err
