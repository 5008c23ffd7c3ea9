"""Hugging Face datasets as classification data (``hf:``): a save_to_disk folder or parquet files, their ClassLabel
names, splits and columns, trained on exactly as the same images in folders, evaluated alike, and every wrong name
said with what exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_as_hf_dataset
from safetensors.torch import load_file
from test_train import FAST, subset
from tiny import TINY

from metaformer.cli import main

datasets = pytest.importorskip("datasets")
CLASSES = ["airplane", "frog", "truck"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return subset(tmp_path_factory.mktemp("hf") / "data", CLASSES, train=16, val=6)


@pytest.fixture(scope="module")
def saved(folders, tmp_path_factory) -> Path:
    """The same images as a DatasetDict (train, validation) in the image folders' order, saved to disk."""
    return save_as_hf_dataset(folders, tmp_path_factory.mktemp("saved") / "cifar3", CLASSES)


def test_an_hf_dataset_trains_as_the_same_images_in_folders(folders, saved, tmp_path, capsys):
    flags = ["--model", TINY, "--epochs", "1", "--batch-size", "16", "--warmup-epochs", "0", *FAST]
    assert main(["train", str(folders), "--output", str(tmp_path / "folders"), *flags]) == 0
    assert main(["train", f"hf:{saved}", "--output", str(tmp_path / "hf"), *flags]) == 0
    a, b = load_file(tmp_path / "folders" / "last.safetensors"), load_file(tmp_path / "hf" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same samples in the same order, augmentation included
    records = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("folders", "hf")]
    assert records[0]["top1"] == records[1]["top1"] and records[1]["images"] == 18
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["resolved"]["classes"] == CLASSES  # the ClassLabel's names
    capsys.readouterr()
    checkpoint = str(tmp_path / "hf" / "last.safetensors")
    assert main(["eval", f"hf:{saved}", "--model", TINY, "--checkpoint", checkpoint, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(records[1]["top1"], abs=1e-3)


def test_parquet_files_with_other_split_and_column_names(saved, tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    loaded = datasets.load_from_disk(str(saved))
    for split, name in (("train", "train"), ("validation", "test")):
        loaded[split].rename_columns({"image": "img", "label": "y"}).to_parquet(str(folder / f"{name}-00000.parquet"))
    flags = ["--model", TINY, "--epochs", "1", "--batch-size", "16", *FAST]
    columns = ["--image-column", "img", "--label-column", "y", "--val-split", "test"]
    assert main(["train", f"hf:{folder}", "--output", str(tmp_path / "run"), *flags, *columns]) == 0
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["classes"] == CLASSES


def test_wrong_names_are_said_with_what_exists(saved, folders, tmp_path, capsys):
    flags = ["--model", TINY, "--epochs", "1", "--batch-size", "16", *FAST]
    assert main(["train", f"hf:{saved}", "--output", str(tmp_path / "a"), *flags, "--val-split", "test"]) == 1
    assert "has no split 'test'; its splits: train, validation" in capsys.readouterr().err
    assert main(["train", f"hf:{saved}", "--output", str(tmp_path / "b"), *flags, "--image-column", "img"]) == 1
    assert "no column(s) ['img']; its columns: image, label" in capsys.readouterr().err
    assert main(["train", str(folders), "--output", str(tmp_path / "c"), *flags, "--image-column", "img"]) == 1
    assert "name an hf: dataset's columns" in capsys.readouterr().err
    assert main(["train", f"hf:{tmp_path / 'nothing'}", "--output", str(tmp_path / "d"), *flags]) == 1
    assert "cannot read this dataset" in capsys.readouterr().err
