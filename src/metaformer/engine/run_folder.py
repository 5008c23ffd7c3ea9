"""A training run's folder: its files, the order they are written in, and the checks before starting or resuming.

After each round (an epoch, or the iterations between two evaluations) the weights are written first, then
``last.state.pt`` with the whole metrics history, then ``metrics.jsonl`` and ``steps.jsonl`` rewritten from that
history. Every file is written under a temporary name and renamed. So a kill at any moment leaves a folder whose
state is complete; a metrics line is written only once its round is resumable; and ``--resume`` rewrites
``metrics.jsonl`` and ``steps.jsonl`` from the state, so they never hold a round twice or miss one.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl  # POSIX file locks; elsewhere a run folder is not locked
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None

from ..errors import RunFolderError
from ..files import atomic_write, file_problem, remove_temporaries, write_json
from .plot import plot_metrics

CONFIG = "config.json"
METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"  # the training loss and learning rate every --log-every steps
STATE = "last.state.pt"
CURVES = "curves.png"
WEIGHTS = ("last.safetensors", "best.safetensors", "last_ema.safetensors")
RUN_FILES = (CONFIG, METRICS, STEPS, STATE, CURVES, *WEIGHTS)
LOCK = ".lock"  # held by the process that writes the run, for its whole life


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: int | None = None
        self._created = False

    def lock(self) -> None:
        """Hold the folder for this process: while it lives, another run into the folder (new, forced or resumed)
        is refused, naming it. The OS drops the lock when the process ends, however it ends (kill -9 included),
        so a dead run never blocks the next one."""
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunFolderError(f"--output {self.path}: {error.strerror or error}") from error
        if fcntl is None:
            os.close(handle)
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(handle, 200).decode(errors="replace").strip() or "another process"
            os.close(handle)
            raise RunFolderError(
                f"{self.path} is the folder of a run that is still going ({holder}): wait for it to end, or "
                "choose another --output (--force never deletes a live run's files)"
            ) from None
        os.ftruncate(handle, 0)
        os.write(handle, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self._lock = handle

    def unlock(self) -> None:
        """Let the folder go; a folder this run created and left without a file of a run is removed."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self._created and self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {LOCK}:
            (self.path / LOCK).unlink(missing_ok=True)
            self.path.rmdir()

    def discard_unstarted(self) -> None:
        """A new run that stopped before its first checkpoint leaves nothing to resume: its config.json goes too,
        so that the same command can simply be run again (a kill -9 leaves it; --force then clears it)."""
        if self._lock is not None and not (self.path / STATE).exists():
            for name in (CONFIG, METRICS, STEPS, CURVES):
                (self.path / name).unlink(missing_ok=True)

    def present(self) -> list[str]:
        return [name for name in RUN_FILES if (self.path / name).is_file()]

    def describe(self) -> str:
        """What a folder holds, for messages: its files and how far its log got."""
        logged = 0
        if (self.path / METRICS).is_file():
            logged = sum(1 for line in (self.path / METRICS).read_text().splitlines() if line.strip())
        return f"{', '.join(self.present())}; {logged} line(s) in {METRICS}"

    def prepare_new(self, force: bool) -> None:
        """Refuse to start a new run where one already is, unless ``force``: then remove its files."""
        present = self.present()
        if present and not force:
            if STATE in present:
                advice = f"continue it with `metaformer train --resume {self.path}`, or start afresh with --force"
            else:
                advice = (
                    "it stopped before its first checkpoint, so there is nothing to resume: start afresh with --force"
                )
            raise RunFolderError(
                f"{self.path} already holds a run ({self.describe()}): {advice} (which deletes "
                "those files), or choose another --output"
            )
        for name in present:
            (self.path / name).unlink()
        remove_temporaries(self.path)

    def check_resumable(self) -> dict:
        """The run's config.json, or an error naming exactly what is missing."""
        if not self.path.is_dir():
            raise RunFolderError(f"--resume {self.path}: no such folder")
        if not (self.path / CONFIG).is_file():
            found = ", ".join(sorted(p.name for p in self.path.iterdir() if p.name != LOCK)[:8]) or "nothing"
            raise RunFolderError(
                f"{self.path} has no {CONFIG}, so it is not a run folder of `metaformer train` (it holds {found})"
            )
        config = self.read_config()
        if not (self.path / STATE).is_file():
            raise RunFolderError(
                f"{self.path} has {CONFIG} but no {STATE}: the run stopped before its first checkpoint, so there "
                f"is nothing to resume. Start it again with the same command and --force."
            )
        return config

    def read_config(self) -> dict:
        try:
            config = json.loads((self.path / CONFIG).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunFolderError(f"{self.path / CONFIG}: not valid JSON ({error}); was it edited?") from error
        for key in ("task", "settings", "recipe"):
            if key not in config:
                raise RunFolderError(
                    f"{self.path / CONFIG} lacks {key!r}: written by another version of metaformer train, or edited"
                )
        return config

    def write_config(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / CONFIG, config)

    def save_state(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.path / STATE, buffer.getbuffer())  # a view: no copy of a state of hundreds of MB

    def load_state(self, device: torch.device) -> dict[str, Any]:
        path = self.path / STATE
        problem = file_problem(path)
        if problem:
            raise RunFolderError(f"{path}: {problem}")
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as error:  # noqa: BLE001  torch raises several unrelated types for a damaged file
            reason = (str(error) or type(error).__name__).splitlines()[0]
            raise RunFolderError(
                f"{path}: not a readable training state ({reason}); the run cannot be resumed from it"
            ) from error

    def write_metrics(self, records: list[dict], steps: list[dict], x_key: str) -> None:
        """``metrics.jsonl`` (a line a round) and ``steps.jsonl`` (a line every --log-every steps) rewritten from
        the whole history, then the plot."""
        atomic_write(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in records))
        atomic_write(self.path / STEPS, "".join(json.dumps(s) + "\n" for s in steps))
        atomic_write(self.path / CURVES, plot_metrics(records, steps, x_key))

    def remove_temporaries(self) -> list[Path]:
        return remove_temporaries(self.path)


def random_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]  # lists from some serialisers must become tuples again
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
