"""The run's curves as a PNG: training loss, and every accuracy-like validation metric, per epoch."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    if not records:
        return
    epochs = [r["epoch"] for r in records]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        if key in records[0]:
            left.plot(epochs, [r[key] for r in records], marker="o", label=key)
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    skip = {"epoch", "train_loss", "val_loss", "lr", "images_per_s", "time_s", "skipped_images", "images", "unreadable"}
    for key in records[0]:
        if key not in skip and isinstance(records[0][key], (int, float)):
            right.plot(epochs, [r[key] for r in records], marker="o", label=key)
    right.set(xlabel="epoch", ylabel="%", title="validation")
    right.legend()
    figure.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(out)
