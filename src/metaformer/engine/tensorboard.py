"""``--log tensorboard``: the figures of metrics.jsonl and steps.jsonl also as TensorBoard scalars, in
``RUN/tensorboard``, each at the optimizer step it was taken at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError

LOGS = ("tensorboard",)


def check_log(log: str | None) -> None:
    """Refuses an unknown log, and TensorBoard's without its package, before any training."""
    if log is None:
        return
    if log not in LOGS:
        raise ConfigError(f"--log takes {', '.join(LOGS)}, got {log!r}")
    try:
        import tensorboard  # noqa: F401  torch.utils.tensorboard writes through it
    except ImportError as error:
        raise ConfigError("--log tensorboard needs TensorBoard: pip install 'metaformer[log]'") from error


class TensorBoardLog:
    """A writer that starts at ``start_step``: events a killed run wrote from there on are purged (TensorBoard
    drops them when it reads), so a resumed run shows each step once."""

    def __init__(self, folder: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer: Any = SummaryWriter(str(folder / "tensorboard"), purge_step=start_step or None)

    def write(self, step: int, record: dict, steps: list[dict]) -> None:
        """A round's record (at its last step) and the training steps logged in it."""
        for line in steps:
            for key, value in line.items():
                if key not in ("step", "epoch", "iteration") and _is_number(value):
                    self.writer.add_scalar(f"steps/{key}", value, line["step"])
        for key, value in record.items():
            if _is_number(value):
                self.writer.add_scalar(f"metrics/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
