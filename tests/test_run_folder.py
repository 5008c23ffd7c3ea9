"""A run folder survives a kill -9 at any moment, a full disk and a bad --resume; no readable data is no success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import slow_but
from safetensors.torch import load_file
from test_train import FAST, subset
from tiny import TINY

import metaformer
from metaformer.cli import main

TESTS = Path(__file__).parent
COMMON = ["--model", TINY, "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "1", *FAST]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return subset(tmp_path_factory.mktemp("runs") / "data", ["airplane", "frog"], train=16, val=6)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """The reference: two epochs without interruption."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", str(data), "--output", str(run), "--epochs", "2", *COMMON]) == 0
    return run


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def temporaries(run: Path) -> list[str]:
    return [p.name for p in run.iterdir() if ".tmp-" in p.name]


def train_until_killed(run: Path, data: Path, file: str, occurrence: int) -> None:
    """A real kill -9 of a training process, just before it renames ``file`` into place for the ``occurrence``-th
    time: the new file is written under its temporary name, the old one is still there."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS)!r})
        import tiny
        from metaformer.cli import main

        rename, seen = os.replace, 0
        def replace(source, target, *args, **kwargs):
            global seen
            if Path(target).name == {file!r} and Path(target).parent.name == {run.name!r}:
                seen += 1
                if seen == {occurrence}:
                    os.kill(os.getpid(), signal.SIGKILL)
            return rename(source, target, *args, **kwargs)
        os.replace = replace
        sys.exit(main({["train", str(data), "--output", str(run), "--epochs", "2", *COMMON]!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr[-2000:]


# Each moment of the end of epoch 2: before the weights, between weights and state, between the state and the
# metrics line (where a metrics line used to be written twice), between the metrics and the plot.
@pytest.mark.parametrize(
    "file", slow_but(["last.safetensors", "last.state.pt", "metrics.jsonl", "curves.png"], {"last.state.pt"})
)
def test_a_kill_at_any_moment_then_resume_gives_the_straight_run(file, data, straight, tmp_path):
    run = tmp_path / "run"
    train_until_killed(run, data, file, occurrence=2)
    assert temporaries(run), "the kill should leave the file it was writing"
    logged = epochs_logged(run)
    assert logged in ([1], [1, 2])  # a line is there only once its epoch is resumable
    assert main(["train", "--resume", str(run)]) == 0
    assert epochs_logged(run) == [1, 2]
    assert temporaries(run) == []
    ours, reference = load_file(run / "last.safetensors"), load_file(straight / "last.safetensors")
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_until_killed(run, data, "last.state.pt", occurrence=1)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 1
    error = capsys.readouterr().err
    assert "has config.json but no last.state.pt" in error and "nothing to resume" in error
    assert main(["train", str(data), "--output", str(run), "--epochs", "1", *COMMON]) == 1
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert main(["train", str(data), "--output", str(run), "--epochs", "1", "--force", *COMMON]) == 0
    assert epochs_logged(run) == [1] and temporaries(run) == []


def test_resume_names_exactly_what_is_missing(tmp_path, capsys):
    def resume_error(folder: Path) -> str:
        assert main(["train", "--resume", str(folder)]) == 1
        return capsys.readouterr().err

    assert "no such folder" in resume_error(tmp_path / "nowhere")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    error = resume_error(tmp_path / "mine")
    assert "has no config.json" in error and "it holds notes.txt" in error
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert "config.json: not valid JSON" in resume_error(tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"task": "classification", "settings": {}}))
    assert "lacks 'recipe'" in resume_error(tmp_path / "broken")


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data), "--output", str(run), "--epochs", "2", "--stop-after", "1", *COMMON]) == 0
    state_before = (run / "last.state.pt").read_bytes()
    # A file-size limit makes every write past it fail as a full disk does: set between the sizes of the weights and
    # of the training state (weights, EMA and optimizer moments), the weights fit and the state does not.
    weights, state = (run / "last.safetensors").stat().st_size, len(state_before)
    assert weights < state
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({(weights + state) // 2}, resource.RLIM_INFINITY))
        sys.path.insert(0, {str(TESTS)!r})
        import tiny
        from metaformer.cli import main
        sys.exit(main(["train", "--resume", {str(run)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: could not write {run / 'last.state.pt'}: File too large; the previous last.state.pt is kept"
    ], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert (run / "last.state.pt").read_bytes() == state_before and temporaries(run) == []
    assert epochs_logged(run) == [1]
    assert main(["train", "--resume", str(run)]) == 0  # with room again, the run continues
    assert epochs_logged(run) == [1, 2]


def test_an_unwritable_file_is_named(data, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "best.safetensors").mkdir(parents=True)  # something in the way that even root cannot replace
    assert main(["train", str(data), "--output", str(run), "--epochs", "1", *COMMON]) == 1
    assert f"could not write {run / 'best.safetensors'}: Is a directory" in capsys.readouterr().err


def test_an_epoch_without_one_readable_image_stops_the_run(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (data / split / name).mkdir(parents=True)
            for i in range(8):
                (data / split / name / f"{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert main(["train", str(data), "--output", str(tmp_path / "run"), "--epochs", "1", *COMMON]) == 1
    assert "no training sample could be read in epoch 1 (16 unreadable" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.state.pt").exists()


def test_eval_with_no_readable_image_fails_and_says_zero(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    metaformer.save_checkpoint(metaformer.create_model(TINY, num_classes=2), weights)
    for name in ("cat", "dog"):
        (tmp_path / "val" / name).mkdir(parents=True)
        (tmp_path / "val" / name / "x.png").write_bytes(b"not a png")
    capsys.readouterr()
    code = main(
        [
            "eval",
            str(tmp_path),
            "--model",
            TINY,
            "--checkpoint",
            str(weights),
            "--json",
            "--num-workers",
            "0",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and json.loads(captured.out)["images"] == 0 and json.loads(captured.out)["top1"] is None
    assert "no image of" in captured.err


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_gives_each_its_own_stream(data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(data), "--output", str(run), "--epochs", "2", "--stop-after", "1", *COMMON]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*torchrun, str(TESTS / "tiny.py"), "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved by 1 process(es) and resumes with 2" in done.stderr
    assert epochs_logged(run) == [1, 2]
