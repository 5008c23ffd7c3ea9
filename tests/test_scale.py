"""Training on many machines: two torchrun "nodes" of two processes each, accumulating two micro-batches, give the
weights, loss and accuracy of one process with the same global batch (DDP's gradient sync, no_sync and the sharded
evaluation at once); srun's tasks without torchrun are read from SLURM's variables (the same process group then)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train import FAST, subset
from tiny import TINY

from metaformer.cli import main
from metaformer.engine.distributed import process_ranks
from metaformer.errors import ConfigError

TINY_SCRIPT = str(Path(__file__).with_name("tiny.py"))
EXACT = ["--model", TINY, "--epochs", "1", "--lr", "1e-3", "--warmup-epochs", "0", "--no-augment", "--drop-path", "0"]
EXACT += ["--mixup", "0", "--cutmix", "0", *FAST]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return subset(tmp_path_factory.mktemp("scale") / "data", ["airplane", "frog"], train=16, val=4)


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", str(data), "--output", str(run), "--batch-size", "16", *EXACT]) == 0
    return run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_same_weights(reference: Path, run: Path) -> None:
    expected, weights = load_file(reference / "last.safetensors"), load_file(run / "last.safetensors")
    assert max((expected[k] - weights[k]).abs().max().item() for k in expected) < 1e-4


def test_slurm_ranks_are_read_and_a_missing_address_is_said():
    slurm = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT are not set"):
        process_ranks(slurm)
    assert process_ranks({**slurm, "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}) == (3, 4, 1)
    assert process_ranks({**slurm, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0"}) == (1, 2, 0)  # torchrun's
    assert process_ranks({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == (0, 1, 0)


@pytest.mark.slow
def test_two_nodes_of_two_processes_train_as_one_process(data, one_process, tmp_path):
    run, port = tmp_path / "run", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = []
    for node in (0, 1):  # two torchrun agents meeting at one c10d rendezvous, as on two machines
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2"]
        command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "scale-test"]
        command += ["--node_rank", str(node), TINY_SCRIPT, "train", str(data), "--output", str(run)]
        # 2 nodes x 2 processes x 2 x 2 accumulated = 16: no_sync on the first micro-batch, one all-reduce a step
        command += ["--batch-size", "2", "--grad-accum-steps", "2", *EXACT]
        agents.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for agent in agents:
        _, err = agent.communicate(timeout=600)
        assert agent.returncode == 0, err[-3000:]
    assert_same_weights(one_process, run)
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["world_size"] == 4 and config["resolved"]["global_batch"] == 16
    one, four = (json.loads((folder / "metrics.jsonl").read_text()) for folder in (one_process, run))
    assert four["images"] == 8  # every validation image counted once across the four processes
    assert four["top1"] == pytest.approx(one["top1"])
    assert four["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
