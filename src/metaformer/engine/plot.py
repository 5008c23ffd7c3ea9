"""The run's curves as a PNG: training loss, and every accuracy-like validation metric, per epoch or iteration."""

from __future__ import annotations

import io

NOT_PLOTTED = {
    "epoch",
    "iteration",
    "train_loss",
    "val_loss",
    "lr",
    "images_per_s",
    "time_s",
    "skipped_images",
    "images",
    "unreadable",
    "detections",
}


def plot_metrics(records: list[dict], x_key: str) -> bytes:
    """PNG bytes of the loss curves (left) and validation metrics (right) against ``x_key``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        _plot(left, records, x_key, key)
    left.set(xlabel=x_key, ylabel="loss", title="loss")
    metrics = sorted({k for r in records for k, v in r.items() if k not in NOT_PLOTTED and isinstance(v, float)})
    for key in metrics:
        _plot(right, records, x_key, key)
    right.set(xlabel=x_key, ylabel="%", title="validation")
    for axes in (left, right):
        if axes.lines:
            axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _plot(axes, records: list[dict], x_key: str, key: str) -> None:  # noqa: ANN001
    # Metrics are missing from rounds without an evaluation, and undefined ones (None) are left out.
    points = [(r[x_key], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
        axes.plot(*zip(*points, strict=True), marker="o", label=key)
