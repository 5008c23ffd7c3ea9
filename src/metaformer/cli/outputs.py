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
