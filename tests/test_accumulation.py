"""Gradient accumulation (--grad-accum-steps, timm's name): N micro-batches of B make one optimizer step of N x B,
counted as one step by the schedule, the logs and the plan, and resumed exactly after a kill inside a cycle."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import FAST, subset
from tiny import TINY

from metaformer.cli import main
from metaformer.data.samplers import StreamSampler

TESTS = Path(__file__).parent
# No augmentation, drop path, MixUp or CutMix: the two ways of making a step see the same pixels.
EXACT = ["--model", TINY, "--lr", "1e-3", "--warmup-epochs", "0", "--no-augment", "--drop-path", "0"]
EXACT += ["--mixup", "0", "--cutmix", "0", *FAST]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return subset(tmp_path_factory.mktemp("accumulation") / "data", ["airplane", "frog"], train=16, val=4)


def test_a_step_of_four_micro_batches_of_eight_is_a_step_of_thirty_two(data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", str(data), "--output", str(whole), "--epochs", "1", "--batch-size", "32", *EXACT]) == 0
    accumulated = ["--batch-size", "8", "--grad-accum-steps", "4"]
    assert main(["train", str(data), "--output", str(parts), "--epochs", "1", *accumulated, *EXACT]) == 0
    one, four = load_file(whole / "last.safetensors"), load_file(parts / "last.safetensors")
    assert max((one[k] - four[k]).abs().max().item() for k in one) < 1e-5  # float rounding of the sums
    # AdamW's update hardly depends on the gradient's scale; its first moment, (1 - beta1) x gradient after one
    # step, does: the gradients themselves are equal.
    moments = [torch.load(run / "last.state.pt", weights_only=True)["optimizer"]["state"] for run in (whole, parts)]
    for index, state in moments[0].items():
        assert torch.allclose(state["exp_avg"], moments[1][index]["exp_avg"], rtol=1e-4, atol=1e-9)
    config = json.loads((parts / "config.json").read_text())
    assert config["settings"]["grad_accum_steps"] == 4
    assert config["resolved"]["global_batch"] == 32 and config["resolved"]["steps_per_epoch"] == 1
    assert config["resolved"]["lr"] == 1e-3
    state = torch.load(parts / "last.state.pt", weights_only=True)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}  # one optimizer step


def test_the_learning_rate_rule_counts_the_accumulated_batch(data, tmp_path):
    run = tmp_path / "run"
    flags = ["--batch-size", "4", "--grad-accum-steps", "2", "--epochs", "1", "--model", TINY, *FAST]
    assert main(["train", str(data), "--output", str(run), "--warmup-epochs", "0", *flags]) == 0
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["global_batch"] == 8 and resolved["lr"] == pytest.approx(1e-3 * 8 / 1024)
    assert resolved["steps_per_epoch"] == 4  # 32 images in steps of 8


def test_each_micro_batch_is_its_share_of_the_global_batch():
    one = list(StreamSampler(64, 32, 0, 1, 0, 0, 2))
    four = list(StreamSampler(64, 8, 0, 1, 0, 0, 2, accumulation=4))
    two_processes = [list(StreamSampler(64, 4, rank, 2, 0, 0, 2, accumulation=4)) for rank in (0, 1)]
    assert four == one  # the same images in the same order
    for step in range(2):  # each micro-batch of each process: a slice of the step's 32
        step_images = set(one[32 * step : 32 * (step + 1)])
        assert (
            set(two_processes[0][16 * step : 16 * (step + 1)]) | set(two_processes[1][16 * step : 16 * (step + 1)])
            == step_images
        )


@pytest.mark.slow
def test_a_kill_inside_an_accumulation_cycle_then_resume_is_the_straight_run(data, tmp_path):
    flags = ["--epochs", "2", "--batch-size", "4", "--grad-accum-steps", "2", "--model", TINY, "--lr", "1e-3"]
    flags += ["--warmup-epochs", "1", *FAST]  # with augmentation, MixUp and drop path: every random stream resumed
    straight = tmp_path / "straight"
    assert main(["train", str(data), "--output", str(straight), *flags]) == 0
    run = tmp_path / "run"
    # 32 images, steps of 8 in two micro-batches: 8 backward passes an epoch. The 12th is epoch 2's fourth: the
    # second micro-batch of its second step, after the first one's gradients were accumulated.
    script = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        sys.path.insert(0, {str(TESTS)!r})
        import tiny
        from metaformer.cli import main

        backward, seen = torch.Tensor.backward, 0
        def counting(self, *args, **kwargs):
            global seen
            seen += 1
            if seen == 12:
                os.kill(os.getpid(), signal.SIGKILL)
            return backward(self, *args, **kwargs)
        torch.Tensor.backward = counting
        sys.exit(main({["train", str(data), "--output", str(run), *flags]!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr[-2000:]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert main(["train", "--resume", str(run)]) == 0
    ours, reference = load_file(run / "last.safetensors"), load_file(straight / "last.safetensors")
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_a_bad_accumulation_is_refused(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", str(data), "--output", str(tmp_path / "r"), "--model", TINY, "--grad-accum-steps", "0"])
    assert "--grad-accum-steps" in capsys.readouterr().err
    flags = ["--batch-size", "16", "--grad-accum-steps", "4", "--model", TINY, *FAST]
    assert main(["train", str(data), "--output", str(tmp_path / "big"), *flags]) == 1
    assert "16 x 4 accumulated x 1 processes" in capsys.readouterr().err
