"""One short training run read from three sources holding the same images: an image folder, a Hugging Face dataset
(``hf:``, a save_to_disk folder, map-style) and WebDataset shards (``wds:``, streamed), with the same model, recipe
and seed. Reports each run's training images/s and top-1; the streamed run reads its epoch in another order, so its
accuracy agrees within noise, not bit for bit.

    python benchmarks/sources.py                                # PoolFormer-S12 on flowers5 at 64 px, 2 epochs
    python benchmarks/sources.py --json benchmarks/results/sources-flowers5-2core-epyc-avx2.json

Runs alternate source by source within each repeat (``--repeats``); medians are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch
import webdataset as wds
from speed import machine

from metaformer.tasks import RunSettings, train
from metaformer.tasks.classification.data import ImageFolder
from metaformer.tasks.classification.recipe import SHORT

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers5"


def write_hf(root: Path) -> Path:
    import datasets

    splits = {}
    for split, folder in (("train", "train"), ("validation", "val")):
        dataset = ImageFolder(DATA / folder, transform=lambda image: image)
        rows = {"image": [str(p) for p, _ in dataset.samples], "label": [label for _, label in dataset.samples]}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=dataset.classes)})
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root / "hf"))
    return root / "hf"


def write_wds(root: Path, shards: int) -> Path:
    folder = root / "wds"
    folder.mkdir()
    for split, source in (("train", "train"), ("validation", "val")):
        dataset = ImageFolder(DATA / source, transform=lambda image: image)
        for shard in range(shards):
            with wds.TarWriter(str(folder / f"flowers5-{split}-{shard:04d}.tar")) as writer:
                for path, label in dataset.samples[shard::shards]:
                    key = f"{path.parent.name}_{path.stem}"
                    writer.write({"__key__": key, "jpg": path.read_bytes(), "cls": str(label)})
        (folder / "classes.txt").write_text("\n".join(dataset.classes) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="poolformer_s12")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    recipe = dataclasses.replace(SHORT, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sources = {"folder": str(DATA), "hf": f"hf:{write_hf(root)}", "wds": f"wds:{write_wds(root, args.shards)}"}
        for repeat in range(args.repeats):
            for name, data in sources.items():
                settings = RunSettings(data=data, model=args.model, output=str(root / f"{name}-{repeat}"),
                                       num_workers=args.num_workers, progress=False)  # fmt: skip
                records = train(settings, recipe, force=True)
                runs.setdefault(name, []).append(
                    {
                        "images_per_s": statistics.median(r["images_per_s"] for r in records),
                        "top1": records[-1]["top1"],
                    }
                )
                print(name, json.dumps(runs[name][-1]), flush=True)
    summary = {
        name: {
            "train_images_per_s_median": statistics.median(r["images_per_s"] for r in results),
            "top1_last": [r["top1"] for r in results],
        }
        for name, results in runs.items()
    }
    print(f"\n{'source':<8} {'train img/s':>12} {'top-1 (each repeat)':>20}")
    for name, row in summary.items():
        print(f"{name:<8} {row['train_images_per_s_median']:>12.1f} {row['top1_last']!s:>20}")
    if args.json:
        record = {
            "what": f"{args.model} on flowers5 (3,457 train, 860 val) at {args.image_size} px, {args.epochs} epochs, "
            "recipe short, from a folder, hf: (save_to_disk) and wds: (streamed)",
            "machine": machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "settings": {**vars(args)},
            "sources": summary,
            "runs": runs,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
