"""The run's curves as a PNG: the training loss, the learning rate, and every accuracy-like validation metric, per
epoch or iteration."""

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


def plot_metrics(records: list[dict], steps: list[dict], x_key: str) -> bytes:
    """PNG bytes of the loss (every logged step, and each round's mean), the learning rate, and the validation
    metrics, against ``x_key`` (epochs, fractional for the logged steps, or iterations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss, rate, right) = plt.subplots(1, 3, figsize=(15, 4))
    # Fixed margins that fit the labels: tight_layout draws the whole figure once more to measure them, a fifth of
    # the time of this plot, which is written at every round's end (0.38 -> 0.31 s on one core of an EPYC).
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.92, wspace=0.25)
    _plot(loss, steps, x_key, "train_loss", label="train_loss (logged steps)", marker="", linewidth=0.8)
    for key in ("train_loss", "val_loss"):
        _plot(loss, records, x_key, key, label=f"{key} (round mean)" if key == "train_loss" else key)
    loss.set(xlabel=x_key, ylabel="loss", title="loss")
    _plot(rate, steps if steps else records, x_key, "lr", marker="" if steps else "o")
    rate.set(xlabel=x_key, ylabel="learning rate", title="learning rate")
    rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    metrics = sorted({k for r in records for k, v in r.items() if k not in NOT_PLOTTED and isinstance(v, float)})
    for key in metrics:
        _plot(right, records, x_key, key)
    right.set(xlabel=x_key, ylabel=validation_label(metrics), title="validation")
    for axes in (loss, rate, right):
        if axes.lines:
            axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def validation_label(metrics: list[str]) -> str:
    """The validation axis' label: COCO's AP and AR are areas and recalls reported x100, not percentages of
    anything; accuracy and IoU are percentages."""
    if any(key.removeprefix("mask_").startswith(("AP", "AR")) for key in metrics):
        return "COCO AP / AR (x100)"
    return "%"


def _plot(axes, records: list[dict], x_key: str, key: str, label: str | None = None, **style) -> None:  # noqa: ANN001
    # Metrics are missing from rounds without an evaluation, and undefined ones (None) are left out.
    points = [(r[x_key], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
        axes.plot(*zip(*points, strict=True), label=label or key, **({"marker": "o"} | style))
