"""The command line, as a user runs it: predict on real photos, list, info, convert, benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._inductor.config as inductor_config
from conftest import randomize
from PIL import Image
from tiny import TINY

import metaformer
from metaformer.checkpoints import save_checkpoint
from metaformer.cli import main
from metaformer.data import imagenet_labels


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    model = randomize(metaformer.create_model("poolformer_s12"), seed=11).eval()
    path = tmp_path_factory.mktemp("weights") / "poolformer_s12.pth.tar"
    save_checkpoint(model, path, to="official")
    hf_folder = save_checkpoint(model, path.parent / "hf", to="hf")
    return path, hf_folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    model = randomize(metaformer.create_model(TINY), seed=12).eval()
    return metaformer.save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


def run_json(capsys, *args: str) -> tuple[int, list[dict]]:
    code = main(list(args))
    lines = capsys.readouterr().out.splitlines()
    return code, [json.loads(line) for line in lines]


def test_predict_matches_hugging_face_top5_on_real_photos(official_checkpoint, imagenet_samples, capsys):
    checkpoint, hf_folder = official_checkpoint
    photos = imagenet_samples[::10]
    gray = [p for p in imagenet_samples if Image.open(p).mode == "L"]
    photos += gray
    code, results = run_json(
        capsys,
        "predict",
        *map(str, photos),
        "--model",
        "poolformer_s12",
        "--checkpoint",
        str(checkpoint),
        "--json",
        "--batch-size",
        "4",
    )
    assert code == 0 and len(results) == len(photos)

    transformers = pytest.importorskip("transformers")  # the one test of this module that needs it
    hf = transformers.PoolFormerForImageClassification.from_pretrained(hf_folder).eval()
    processor = transformers.PoolFormerImageProcessorPil(crop_pct=0.9)
    labels = imagenet_labels()
    for path, result in zip(photos, results, strict=False):
        assert result["path"] == str(path)
        with torch.no_grad():
            pixels = processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
            probs = hf(pixels).logits.softmax(-1)[0]
        top = probs.topk(5)
        assert [e["index"] for e in result["topk"]] == top.indices.tolist()
        assert [e["label"] for e in result["topk"]] == [labels[i] for i in top.indices.tolist()]
        assert [e["prob"] for e in result["topk"]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_predict_folders_recursively_and_reports_bad_files(official_checkpoint, imagenet_samples, tmp_path, capsys):
    checkpoint, _ = official_checkpoint
    nested = tmp_path / "photos" / "more"
    nested.mkdir(parents=True)
    for photo in imagenet_samples[:3]:
        shutil.copy(photo, nested.parent if photo == imagenet_samples[0] else nested)
    (nested / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (nested / "notes.txt").write_text("not an image, not picked up from a folder")
    code, results = run_json(
        capsys,
        "predict",
        str(tmp_path / "photos"),
        str(tmp_path / "missing.png"),
        "--model",
        "poolformer_s12",
        "--checkpoint",
        str(checkpoint),
        "--json",
        "--topk",
        "3",
    )
    assert code == 1
    errors = {r["path"]: r["error"] for r in results if "error" in r}
    good = [r for r in results if "topk" in r]
    assert len(good) == 3 and all(len(r["topk"]) == 3 for r in good)
    assert set(errors) == {str(nested / "broken.jpg"), str(tmp_path / "missing.png")}
    assert "cannot read as an image" in errors[str(nested / "broken.jpg")]
    assert errors[str(tmp_path / "missing.png")] == "no such file"


def test_predict_human_output_and_usage_errors(official_checkpoint, imagenet_samples, capsys):
    checkpoint, _ = official_checkpoint
    assert (
        main(
            [
                "predict",
                str(imagenet_samples[0]),
                "--model",
                "poolformer_s12",
                "--checkpoint",
                str(checkpoint),
                "--topk",
                "2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(imagenet_samples[0]) and len(lines) == 3 and "(" in lines[1]
    assert main(["predict", str(imagenet_samples[0]), "--model", "poolformer_s12"]) == 2
    assert "pass --checkpoint FILE" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(imagenet_samples[0]),
                "--model",
                "poolformer_s12",
                "--checkpoint",
                str(checkpoint.parent / "nope.pth"),
            ]
        )
        == 1
    )
    assert "nope.pth: no such file" in capsys.readouterr().err


def test_list_and_info(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "poolformer_m48" in listing and "metaformer_ppaa_s12_224" in listing
    code, (info,) = run_json(capsys, "info", "poolformer_m48", "--json")
    info_text = json.dumps(info)
    assert code == 0 and info["params"] == 73_473_448 and round(info["macs"] / 1e9, 1) == 11.6
    assert info["config"]["depths"] == [8, 8, 24, 8] and info["pretrained_cfg"]["crop_pct"] == 0.95
    assert "poolformer_m48" in info_text and info["training"]["drop_path"] == 0.4
    assert main(["info", "metaformer_random_s12"]) == 0
    assert "frozen" in capsys.readouterr().out


def test_convert_command(official_checkpoint, tmp_path, capsys):
    checkpoint, _ = official_checkpoint
    assert main(["convert", str(checkpoint), str(tmp_path / "s12.safetensors"), "--to", "safetensors"]) == 0
    assert main(["convert", str(tmp_path / "s12.safetensors"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "t.safetensors"), "--to", "timm"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "hf" / "config.json").exists()


def test_benchmark_command(capsys):
    code, (result,) = run_json(
        capsys,
        "benchmark",
        "--model",
        "poolformer_s12",
        "--batch-size",
        "2",
        "--image-size",
        "64",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--json",
    )
    assert code == 0 and (result["batch_size"], result["image_size"], result["dtype"]) == (2, 64, "float32")
    # the rate is the median pass's: two images over its time, so the two figures must agree
    assert result["images_per_s"] == pytest.approx(2 * 1000 / result["median_batch_ms"], rel=1e-6)
    assert result["fused"] and not result["compiled"] and result["model"] == "poolformer_s12"
    assert (
        main(
            [
                "benchmark",
                "--model",
                "poolformer_s12",
                "--batch-size",
                "2",
                "--image-size",
                "64",
                "--iters",
                "1",
                "--warmup",
                "0",
                "--no-fuse",
                "--json",
            ]
        )
        == 0
    )
    assert not json.loads(capsys.readouterr().out)["fused"]


def test_console_script_runs():
    command = shutil.which("metaformer")
    args = [command] if command else [sys.executable, "-m", "metaformer"]
    done = subprocess.run([*args, "info", "poolformer_s12", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["params"] == 11_915_176


def test_predict_uses_a_fine_tuned_checkpoints_labels(imagenet_samples, tmp_path, capsys):
    from metaformer.tasks.classification.predict import Classifier

    model = randomize(metaformer.create_model("poolformer_s12", num_classes=4), seed=5).eval()
    model.reset_classifier(4, labels=["cat", "dog", "owl", "yak"])
    randomize(model.head, seed=6)  # a head whose logits differ clearly, so the order below is the model's
    path = save_checkpoint(model, tmp_path / "pets.safetensors")
    code, results = run_json(
        capsys,
        "predict",
        str(imagenet_samples[0]),
        "--model",
        "poolformer_s12",
        "--checkpoint",
        str(path),
        "--json",
        "--topk",
        "2",
    )
    pixels = metaformer.ImageProcessor.for_model(model)([imagenet_samples[0]])
    with torch.no_grad():
        probs = model(pixels).softmax(-1)[0]
    top = probs.topk(2)
    expected = [("cat", "dog", "owl", "yak")[i] for i in top.indices.tolist()]
    assert code == 0 and [e["label"] for e in results[0]["topk"]] == expected  # the checkpoint's names, in order
    assert [e["prob"] for e in results[0]["topk"]] == pytest.approx(top.values.tolist(), abs=1e-4)
    # The Python API runs a bfloat16 model too, with the same answer within bf16's precision.
    loaded = metaformer.create_model("poolformer_s12", checkpoint=path).to(torch.bfloat16)
    (result,) = Classifier(loaded).predict_files([imagenet_samples[0]], topk=4)
    assert {e["label"]: e["prob"] for e in result.topk} == pytest.approx(
        dict(zip(("cat", "dog", "owl", "yak"), probs.tolist(), strict=True)), abs=0.03
    )


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "x.jpg", "--model", "poolformer_s12", "--topk", "0", "--pretrained"])
    assert "must be a positive integer" in capsys.readouterr().err
    assert main(["benchmark", "--model", "poolformer_s12", "--device", "gpu"]) == 2
    assert "'gpu' is not a device" in capsys.readouterr().err
    assert main(["list", "zzz"]) == 1
    assert "no model name contains 'zzz'" in capsys.readouterr().err
    assert main(["info", "poolformer_s99"]) == 2
    assert "did you mean" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_fused_plain_compiled_and_bfloat16_agree(tiny_checkpoint, imagenet_samples, capsys):
    photos = imagenet_samples[:12]
    runs = {}
    variants = (("fused", []), ("plain", ["--no-fuse"]), ("compiled", ["--compile"]), ("bf16", ["--dtype", "bfloat16"]))
    for name, flags in variants:
        weights = ["--checkpoint", str(tiny_checkpoint)]
        with inductor_config.patch(freezing=False):  # --compile turns freezing on for its process; not for the others
            assert main(["predict", *map(str, photos), "--model", TINY, *weights, "--json", *flags]) == 0
        runs[name] = [json.loads(line)["topk"] for line in capsys.readouterr().out.splitlines()]
    for other in ("plain", "compiled"):
        for fused, theirs in zip(runs["fused"], runs[other], strict=True):
            assert [t["index"] for t in fused] == [t["index"] for t in theirs], other
            assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(fused, theirs, strict=True)), other
    agree = sum(low[0]["index"] == high[0]["index"] for low, high in zip(runs["bf16"], runs["fused"], strict=True))
    assert agree >= 10, agree  # bf16 keeps 8 bits of mantissa: near-ties may flip


@pytest.mark.slow
def test_predict_into_a_closed_pipe_stops_quietly(tiny_checkpoint, imagenet_samples):
    weights = ["--model", TINY, "--checkpoint", str(tiny_checkpoint)]
    photos = [str(p) for p in imagenet_samples[:40]]
    command = [sys.executable, str(Path(__file__).with_name("tiny.py")), "predict", *photos, *weights, "--json"]
    command += ["--batch-size", "8"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    _, errors = process.communicate(timeout=300)
    assert json.loads(first)["topk"]
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors[-2000:]
