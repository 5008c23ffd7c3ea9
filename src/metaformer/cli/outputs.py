"""Results over many images, written as they finish: ``predict --output preds.jsonl`` (one JSON line per image)
and ``embed --output FOLDER`` (feature shards). Under torchrun each process writes a part of its own, which the main
process merges at the end; ``--resume`` skips what a killed run finished, and a kill -9 at any moment loses no
finished line and duplicates none (a line cut short by the kill is dropped and done again)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import UsageError
from ..files import atomic_write


def part_paths(output: Path) -> list[Path]:
    """The parts processes of any earlier run into ``output`` left unmerged."""
    return sorted(output.parent.glob(f"{output.name}.part-*"))


class JsonLines:
    """One process's share of a ``predict --output`` file: appended a batch at a time (whole lines, flushed and
    synced), read back on ``--resume``."""

    def __init__(self, output: Path, rank: int, world_size: int) -> None:
        self.output = output
        self.path = output if world_size == 1 else output.with_name(f"{output.name}.part-{rank}-of-{world_size}")

    @staticmethod
    def check(output: Path, resume: bool, force: bool) -> None:
        """Refuse to replace a results file without --force, and a --resume that contradicts --force."""
        if resume and force:
            raise UsageError("--resume keeps the lines in --output; --force replaces them: give one")
        if output.is_dir():
            raise UsageError(f"--output {output} is a folder; predict writes a JSON-lines file (say preds.jsonl)")
        if (output.exists() or part_paths(output)) and not (resume or force):
            raise UsageError(
                f"--output {output} already holds predictions: pass --resume to classify only the images it lacks, "
                "or --force to start again"
            )

    def clear(self) -> None:
        """--force: start again (the main process, before any process writes)."""
        for path in [self.output, *part_paths(self.output)]:
            path.unlink(missing_ok=True)

    def done(self) -> set[str]:
        """The images every earlier process finished (the merged file and every part), each line whole: a line cut
        short by a kill is removed from its file first, so it is written once, again."""
        finished: set[str] = set()
        for path in [self.output, *part_paths(self.output)]:
            for record in read_lines(path, repair=path == self.path):
                finished.add(record["path"])
        return finished

    def append(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(record) + "\n" for record in records)
        if not text:
            return
        with self.path.open("a", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())

    def merge(self, order: Sequence[str]) -> int:
        """The main process, once every process is done: every line of the file and the parts, once each, in the
        order of ``order`` (the images as found), into ``output`` atomically; the parts removed. Returns the lines."""
        records: dict[str, dict] = {}
        for path in [self.output, *part_paths(self.output)]:
            for record in read_lines(path, repair=False):
                records.setdefault(record["path"], record)
        rank = {path: i for i, path in enumerate(order)}
        ordered = sorted(records.values(), key=lambda r: rank.get(r["path"], len(rank)))
        atomic_write(self.output, "".join(json.dumps(r) + "\n" for r in ordered).encode())
        for path in part_paths(self.output):
            path.unlink()
        return len(ordered)


def read_lines(path: Path, repair: bool) -> list[dict]:
    """The whole JSON lines of ``path`` (none if it does not exist); a last line without its newline, which a kill
    cut short, is left out (and, with ``repair``, cut from the file, which this process is about to append to)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with path.open("r+b") as file:
            file.truncate(end)
    records = []
    for number, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}, line {number}: not a JSON line of predictions ({error.msg})") from error
        if not isinstance(record, dict) or "path" not in record:
            raise UsageError(f"{path}, line {number}: a prediction line names its image ('path'); this one does not")
        records.append(record)
    return records


class FeatureShards:
    """One process's ``embed --output FOLDER``: shards ``features-R-K.npy`` (float32 ``[N, C]``) with the files
    they hold, one path per line, in ``files-R-K.txt``; each written whole (atomically, the list last, so a shard
    whose list exists is complete). ``--resume`` skips the files of every complete shard; what a kill left in
    memory or half written is done again."""

    def __init__(self, folder: Path, rank: int, shard_size: int) -> None:
        self.folder, self.rank, self.shard_size = folder, rank, shard_size
        self.paths: list[str] = []
        self.rows: list = []
        self.written = 0

    @staticmethod
    def check(folder: Path, resume: bool, force: bool) -> None:
        if resume and force:
            raise UsageError("--resume keeps the shards in --output; --force replaces them: give one")
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--output {folder} is a file; embed writes a folder of shards")
        if list(folder.glob("files-*.txt")) and not (resume or force):
            raise UsageError(
                f"--output {folder} already holds feature shards: pass --resume to embed only the images they lack, "
                "or --force to start again"
            )

    @staticmethod
    def tidy(folder: Path, force: bool) -> None:
        """The main process, first: --force removes the shards; otherwise features whose list a kill prevented."""
        folder.mkdir(parents=True, exist_ok=True)
        for features in folder.glob("features-*.npy"):
            if force or not features.with_name(features.name.replace("features-", "files-")[:-4] + ".txt").exists():
                features.unlink()
        if force:
            for listed in folder.glob("files-*.txt"):
                listed.unlink()

    def done(self) -> set[str]:
        return {line for listed in self.folder.glob("files-*.txt") for line in listed.read_text().splitlines()}

    def add(self, paths: Sequence[str], features) -> None:  # noqa: ANN001  a [N, C] tensor
        self.paths += paths
        self.rows.append(features.numpy())
        while len(self.paths) >= self.shard_size:
            self.flush(self.shard_size)

    def flush(self, count: int | None = None) -> None:
        """Write the first ``count`` buffered images (all by default) as the next shard of this process."""
        import io

        import numpy as np

        if not self.paths:
            return
        rows = np.concatenate(self.rows).astype(np.float32)
        count = len(self.paths) if count is None else count
        index = len(list(self.folder.glob(f"files-{self.rank}-*.txt")))
        while (self.folder / f"files-{self.rank}-{index:05d}.txt").exists():
            index += 1
        buffer = io.BytesIO()
        np.save(buffer, rows[:count])
        atomic_write(self.folder / f"features-{self.rank}-{index:05d}.npy", buffer.getvalue())
        atomic_write(self.folder / f"files-{self.rank}-{index:05d}.txt", "".join(p + "\n" for p in self.paths[:count]))
        self.written += count
        self.paths, self.rows = self.paths[count:], [rows[count:]]
