"""Predictions over many images: ``predict --output`` written a batch at a time, resumed after a kill -9 without a
lost or repeated line, and shared among torchrun's processes, merged in the images' order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY

import metaformer
from metaformer.cli import main

TINY_SCRIPT = str(Path(__file__).with_name("tiny.py"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = metaformer.create_model(TINY, num_classes=5)
    return metaformer.save_checkpoint(model, tmp_path_factory.mktemp("predict") / "tiny.safetensors")


@pytest.fixture(scope="module")
def photos(imagenet_samples) -> list[Path]:
    return imagenet_samples[:24]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def command(photos: list[Path], checkpoint: Path, output: Path, *extra: str) -> list[str]:
    return ["predict", *map(str, photos), "--checkpoint", str(checkpoint), "--output", str(output), "--batch-size", "4",
            "--no-progress", "--num-workers", "0", *extra]  # fmt: skip


@pytest.mark.slow
def test_a_kill_mid_write_then_resume_gives_every_line_once(photos, checkpoint, tmp_path, capsys):
    straight = tmp_path / "straight.jsonl"
    assert main(command(photos, checkpoint, straight)) == 0
    expected = lines(straight)
    assert [r["path"] for r in expected] == [str(p) for p in photos] and all(len(r["topk"]) == 5 for r in expected)
    output = tmp_path / "preds.jsonl"
    # The third batch's write is cut after one and a half lines by a real kill -9.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import tiny
        from metaformer.cli import main, outputs

        append, calls = outputs.JsonLines.append, 0
        def cut(self, records):
            global calls
            calls += 1
            records = list(records)
            if calls == 3:
                text = outputs.json.dumps(records[0]) + "\\n" + outputs.json.dumps(records[1])
                with self.path.open("a") as file:
                    file.write(text[: len(text) - 40])
                os.kill(os.getpid(), signal.SIGKILL)
            return append(self, records)
        outputs.JsonLines.append = cut
        sys.exit(main({command(photos, checkpoint, output)!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert not output.read_text().endswith("\n")  # the cut line is there, without its end
    assert main(command(photos, checkpoint, output)) == 2  # refused: it holds predictions
    assert "--resume" in capsys.readouterr().err
    assert main(command(photos, checkpoint, output, "--resume")) == 0
    assert "(9 from before" in capsys.readouterr().out  # two batches and a line survived the kill, not the cut one
    assert lines(output) == expected  # each image once, in order, with the straight run's figures


def test_what_resume_and_force_need_is_said(photos, checkpoint, tmp_path, capsys):
    base = ["predict", str(photos[0]), "--checkpoint", str(checkpoint)]
    assert main([*base, "--resume"]) == 2
    assert "give --output FILE" in capsys.readouterr().err
    output = tmp_path / "p.jsonl"
    assert main([*base, "--output", str(output), "--resume", "--force"]) == 2
    assert "give one" in capsys.readouterr().err
    output.write_text('{"path": "x"}\n{"oops"\n')
    assert main([*base, "--output", str(output), "--resume"]) == 2
    assert "p.jsonl, line 2: not a JSON line" in capsys.readouterr().err
    assert main([*base, "--output", str(output), "--force"]) == 0
    assert [r["path"] for r in lines(output)] == [str(photos[0])]


@pytest.mark.slow
def test_two_processes_share_the_images_and_merge_them_in_order(photos, checkpoint, tmp_path):
    one = tmp_path / "one.jsonl"
    assert main(command(photos, checkpoint, one)) == 0
    two = tmp_path / "two.jsonl"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TINY_SCRIPT]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, *command(photos, checkpoint, two)], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.glob("two.jsonl.part-*"))  # merged, then removed
    single, shared = lines(one), lines(two)
    assert [r["path"] for r in shared] == [r["path"] for r in single]
    for a, b in zip(single, shared, strict=True):
        assert [e["index"] for e in a["topk"]] == [e["index"] for e in b["topk"]]
        assert all(abs(x["prob"] - y["prob"]) < 1e-5 for x, y in zip(a["topk"], b["topk"], strict=True))


def shards(folder: Path) -> tuple[list[str], np.ndarray]:
    paths, rows = [], []
    for listed in sorted(folder.glob("files-*.txt")):
        paths += listed.read_text().splitlines()
        rows.append(np.load(listed.with_name(listed.name.replace("files-", "features-")[:-4] + ".npy")))
    return paths, np.concatenate(rows)


def test_embed_writes_the_models_features_in_shards_and_resumes(photos, checkpoint, tmp_path, capsys):
    folder = tmp_path / "features"
    flags = ["--checkpoint", str(checkpoint), "--output", str(folder), "--batch-size", "4", "--num-workers", "0"]
    assert main(["embed", *map(str, photos), *flags, "--shard-size", "10"]) == 0
    assert sorted(p.name for p in folder.glob("files-*")) == [
        "files-0-00000.txt",
        "files-0-00001.txt",
        "files-0-00002.txt",
    ]
    paths, features = shards(folder)
    assert paths == [str(p) for p in photos] and features.shape == (24, 48) and features.dtype == np.float32
    model = metaformer.create_model(TINY, checkpoint=checkpoint).eval()
    pixels = metaformer.ImageProcessor.for_model(model)(photos[:3])
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(pixels), pre_logits=True)
        stage = model.forward_intermediates(pixels, [1], intermediates_only=True)[0].mean((-2, -1))
    assert np.allclose(features[:3], pooled.numpy(), atol=1e-5)  # the features the head takes
    # A shard lost to a kill (its list never written) and one removed: --resume embeds exactly those images again.
    (folder / "files-0-00001.txt").unlink()
    assert main(["embed", *map(str, photos), *flags, "--shard-size", "10", "--resume"]) == 0
    assert "14 from before" in capsys.readouterr().out
    again, refeatured = shards(folder)
    assert sorted(again) == sorted(paths) and len(again) == 24
    assert np.allclose(refeatured[np.argsort(again)], features[np.argsort(paths)], atol=1e-5)
    staged = tmp_path / "stage"
    assert main(["embed", *map(str, photos[:3]), *flags[:2], "--output", str(staged), "--stage", "1"]) == 0
    assert np.allclose(shards(staged)[1], stage.numpy(), atol=1e-5)
    assert main(["embed", str(photos[0]), *flags[:2], "--output", str(staged)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["embed", str(photos[0]), *flags[:2], "--output", str(tmp_path / "x"), "--stage", "4"]) == 2
    assert "has stages 0 to 3" in capsys.readouterr().err
