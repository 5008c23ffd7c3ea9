"""int8 inference: the form the quantizer sees equals the plain model, the int8 program follows the float model on
real photos, and the commands refuse what int8 cannot do. (Speed and the agreement of a trained model are measured
in benchmarks/speed.py, not here.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import randomize

import metaformer
from metaformer import ImageProcessor
from metaformer.errors import ConfigError, UsageError
from metaformer.int8 import LinearMlp, int8_unsupported_reason, quantization_form, quantize

SMALL = {"depths": (1, 1, 2, 1), "widths": (16, 32, 64, 96), "image_size": 64}
needs_int8 = pytest.mark.skipif(int8_unsupported_reason() is not None, reason=str(int8_unsupported_reason()))


def photos(paths, size: int = 64) -> torch.Tensor:
    processor = ImageProcessor(size=size, crop_pct=0.9)
    return processor(paths).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["poolformer_s12", "convformer_s18", "caformer_s18", "identityformer_s12"])
def test_quantization_form_equals_the_plain_model(name, random_model, imagenet_samples):
    model = random_model(name)
    pixels = photos(imagenet_samples[:4], 224)
    form = quantization_form(model)
    assert any(isinstance(m, LinearMlp) for m in form.modules())  # the MLPs the quantizer fuses GELU into
    with torch.no_grad():
        expected, got = model(pixels), form(pixels)
    assert torch.allclose(got, expected, atol=2e-5 * expected.abs().max().item(), rtol=0)


@needs_int8
def test_int8_follows_the_float_model_on_real_photos(imagenet_samples):
    torch.manual_seed(0)
    model = randomize(metaformer.create_model("poolformer_s12", num_classes=10, **SMALL)).eval()
    pixels = photos(imagenet_samples[:64])
    int8 = quantize(model, pixels[:48])
    with torch.no_grad():
        expected = model(pixels)
        got = int8(pixels)
        odd_batch = int8(pixels[:5])  # another batch size: the same program, no recompile
    assert got.dtype == torch.float32 and got.shape == expected.shape
    error = (got - expected).norm() / expected.norm()
    # Random weights quantize worse than trained ones (measured here: 5% and 91% of the top-1s); a wrong scale or a
    # lost residual would be far off.
    assert error < 0.1, f"int8 logits are {error:.3f} away from float32 (relative)"
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.8
    assert torch.allclose(odd_batch, got[:5], atol=1e-5)
    with pytest.raises(ConfigError, match="calibrated and exported at 64x64"):
        int8(photos(imagenet_samples[:1], 96))
    with pytest.raises(ConfigError, match="stays on the CPU"):
        int8.to(torch.bfloat16)
    with pytest.raises(ConfigError, match="for inference"):
        int8.train()


def test_quantize_refuses_what_it_cannot_take(imagenet_samples):
    model = metaformer.create_model("poolformer_s12", **SMALL).eval()
    with pytest.raises(UsageError, match="plain MetaFormer classifier"):
        quantize(metaformer.fuse(model), photos(imagenet_samples[:2]))
    if int8_unsupported_reason() is None:
        with pytest.raises(UsageError, match="float tensors"):
            quantize(model, [])
        with pytest.raises(UsageError, match="one image size"):
            quantize(model, [photos(imagenet_samples[:2]), photos(imagenet_samples[:2], 96)])


def test_a_cpu_without_vnni_gets_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    reason = int8_unsupported_reason()
    if reason is not None and "x86" in reason:
        pytest.skip(reason)
    assert "no VNNI or AMX" in reason and "bfloat16" in reason


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaformer", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> str:
    # The commands build the named architecture: a 10-class PoolFormer-S12 at 64x64 pixels.
    model = randomize(metaformer.create_model("poolformer_s12", num_classes=10, image_size=64)).eval()
    path = tmp_path_factory.mktemp("int8") / "small.safetensors"
    metaformer.save_checkpoint(model, path)
    return str(path)


@needs_int8
def test_predict_in_int8_agrees_with_float32(small_checkpoint, imagenet_samples):
    folder = str(imagenet_samples[0].parent)
    runs = [cli("predict", folder, "--model", "poolformer_s12", "--checkpoint", small_checkpoint, "--json",
                "--topk", "1", *extra) for extra in ([], ["--dtype", "int8"])]  # fmt: skip
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert "int8: calibrating on" in runs[1].stderr
    top = [[json.loads(line)["topk"][0]["index"] for line in run.stdout.splitlines()] for run in runs]
    assert len(top[1]) == len(imagenet_samples)
    agree = sum(a == b for a, b in zip(*top, strict=True)) / len(top[0])
    assert agree >= 0.8, f"int8 agrees with float32 on {agree:.0%} of the photos"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dtype", "int8", "--device", "cuda"], "runs on x86 CPUs"),
        (["--dtype", "int8", "--no-fuse"], "--no-fuse cannot apply"),
        (["--dtype", "int8", "--compile"], "always compiled"),
        (["--calibration", "x"], "needs --dtype int8"),
    ],
)
def test_predict_refuses_what_int8_cannot_honour(extra, message, small_checkpoint, imagenet_samples):
    run = cli("predict", str(imagenet_samples[0]), "--model", "poolformer_s12", "--checkpoint", small_checkpoint,
              *extra)  # fmt: skip
    assert run.returncode != 0 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


@needs_int8
def test_eval_in_int8_calibrates_on_the_training_split_or_asks(small_checkpoint, tmp_path, imagenet_samples):
    val = tmp_path / "val"
    for index, path in enumerate(imagenet_samples[:20]):  # ten classes, as the model has
        (val / f"class{index % 10}").mkdir(parents=True, exist_ok=True)
        (val / f"class{index % 10}" / path.name).symlink_to(path)
    run = cli("eval", str(tmp_path), "--model", "poolformer_s12", "--checkpoint", small_checkpoint, "--dtype", "int8")
    assert run.returncode != 0 and "has no train/ folder" in run.stderr, run.stderr
    (tmp_path / "train").symlink_to(val)
    run = cli("eval", str(tmp_path), "--model", "poolformer_s12", "--checkpoint", small_checkpoint, "--dtype", "int8",
              "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["images"] == 20
    assert f"of {tmp_path / 'train'}" in run.stderr
