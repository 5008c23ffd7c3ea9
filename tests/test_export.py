"""Export: ONNX files equal to PyTorch in ONNX Runtime, ``torch.export`` programs that run without this library,
and the ``export`` command's checks and refusals."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, randomize, slow_but
from tiny import TINY, TINY_FPN, TINY_MASK_RCNN, TINY_RETINANET

import metaformer
from metaformer.cli import main
from metaformer.fast.export import check_onnx, export_onnx, export_program

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.peer  # compared against a peer library


@pytest.fixture(scope="module")
def photos(imagenet_samples):
    return imagenet_samples[:4]


# Each kind of token mixing the exporter meets: pooling, attention (CAFormer), a fixed-grid matrix (RandFormer),
# InceptionNeXt's split depthwise convolutions and MambaOut's gate over channels-last memory, one block per stage:
# the exporter traces each block alike, so the depth adds time and no check.
ONE_BLOCK_PER_STAGE = {"depths": (1, 1, 1, 1), "widths": (32, 64, 96, 128)}


@pytest.mark.parametrize(
    "name", slow_but(["caformer_s18", "randformer_s12", "inception_next_atto", "mambaout_femto"], set())
)  # PoolFormer's file: the export command's, below
def test_onnx_equals_pytorch_at_two_batch_sizes_and_two_image_sizes(name, photos, tmp_path):
    model = randomize(metaformer.create_model(name, **ONE_BLOCK_PER_STAGE), seed=2).eval()
    assert_onnx_equals(model, export_onnx(model, tmp_path / f"{name}.onnx", model_pixels(model, photos)[:1]), photos)


def model_pixels(model: torch.nn.Module, photos: list) -> torch.Tensor:
    return metaformer.ImageProcessor.for_model(model)(photos)


def assert_onnx_equals(model: torch.nn.Module, path: Path, photos: list) -> None:
    """The file's logits equal the model's at batches of 1 and of every photo, and at a larger size (but for a fixed
    grid, which refuses it)."""
    name = model.name
    pixels = model_pixels(model, photos)
    larger = metaformer.ImageProcessor(size=288)(photos[:2])
    sizes = [pixels[:1], pixels] + ([] if name == "randformer_s12" else [larger])  # RandFormer: a fixed grid
    for batch in sizes:
        check = check_onnx(path, model, batch)
        assert check.shape == (batch.shape[0], 1000)
        assert check.passed, check.max_abs_diff
    if name == "randformer_s12":
        with pytest.raises(Exception, match="(?i)dimension|shape|index"):
            check_onnx(path, model, larger)


def assert_group_norms_are_reductions_and_pooling_is_average_pool(graph, blocks: int) -> None:
    """The ops of PoolFormer blocks in the file: each GroupNorm as reductions, each pooling as one AveragePool."""
    ops = Counter(node.op_type for node in graph.node)
    assert not {"GroupNormalization", "InstanceNormalization"} & set(ops)
    assert ops["ReduceMean"] >= 2 * 2 * blocks  # mean and variance of each block's two norms
    pools = [node for node in graph.node if node.op_type == "AveragePool"]
    assert len(pools) == blocks
    for node in pools:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["count_include_pad"] == 0 and list(attributes["kernel_shape"]) == [3, 3]


@pytest.mark.slow
def test_the_exported_program_runs_without_this_library(photos, tmp_path):
    model = randomize(metaformer.create_model(TINY), seed=3).eval()
    pixels = metaformer.ImageProcessor.for_model(model)(photos)
    path = export_program(model, tmp_path / "tiny.pt2", pixels[:1])
    with torch.no_grad():
        torch.save({"pixels": pixels, "logits": model(pixels)}, tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        f"program = torch.export.load({str(path)!r}).module()\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "assert 'metaformer' not in sys.modules\n"
        "print(float((program(expected['pixels']) - expected['logits']).abs().max()))\n"
        "print(tuple(program(torch.randn(3, 3, 256, 192)).shape))\n"
    )
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert float(lines[0]) <= 1e-4 and lines[1:] == ["(3,", "1000)"]


@pytest.mark.slow
def test_an_aot_inductor_package_equals_the_model(tmp_path):
    # Inductor compiles C++ for every kernel: a narrow model and a small static input keep that short.
    narrow = {"depths": (1, 1, 1, 1), "widths": (16, 32, 48, 64)}
    model = randomize(metaformer.create_model("identityformer_s12", **narrow), seed=4).eval()
    pixels = torch.randn(1, 3, 64, 64)
    path = export_program(model, tmp_path / "model.pt2", pixels, static=True, aot=True)
    package = torch._inductor.aoti_load_package(str(path))
    with torch.no_grad():
        assert (package(pixels) - model(pixels)).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return metaformer.save_checkpoint(randomize(metaformer.create_model(TINY), seed=5), path)


def test_export_command_checks_the_file_on_a_photo(checkpoint, photos, tmp_path, capsys):
    output = tmp_path / "tiny.onnx"
    args = ["export", TINY, "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(output)]
    assert main([*args, "--check-image", str(photos[0]), "--batch-size", "2"]) == 0
    said = capsys.readouterr().out
    assert f"wrote {output}" in said and "ONNX Runtime on" in said and str(photos[0]) in said
    difference = float(said.split("largest logit difference ")[1].split()[0])
    assert difference <= 1e-4
    model = metaformer.create_model(TINY, checkpoint=str(checkpoint)).eval()
    assert_onnx_equals(model, output, photos)  # its dynamic batch and size
    assert_group_norms_are_reductions_and_pooling_is_average_pool(onnx.load(output).graph, blocks=4)
    # Never overwritten without --force; then a static pt2 program, checked the same way.
    assert main(args) == 1 and "--force" in capsys.readouterr().err
    program = tmp_path / "tiny.pt2"
    assert main([*args[:4], "--format", "pt2", "--output", str(program), "--static"]) == 0
    assert "exported program on random pixels" in capsys.readouterr().out
    assert program.is_file() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "pt2", "--output", "x.onnx"], "--format pt2 is written to a .pt2 file"),
        (["--format", "pt2", "--output", "x.pt2", "--opset", "18"], "--opset is an ONNX setting"),
        (["--format", "onnx", "--output", "x.onnx", "--aot"], "--aot compiles a torch.export program"),
        (["--format", "onnx", "--output", "x.onnx", "--check-image", "missing.jpg"], "no such file"),
    ],
)
def test_export_command_refuses_flags_that_do_not_fit(extra, message, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", TINY, "--checkpoint", str(checkpoint), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_detectors_are_refused_with_what_works_instead(tmp_path, capsys):
    model = metaformer.create_model(TINY_RETINANET)
    path = metaformer.save_checkpoint(model, tmp_path / "retinanet.safetensors")
    code = main(
        [
            "export",
            TINY_RETINANET,
            "--checkpoint",
            str(path),
            "--format",
            "onnx",
            "--output",
            str(tmp_path / "r.onnx"),
        ]
    )
    assert code == 2 and "dynamo=False" in capsys.readouterr().err
    assert not (tmp_path / "r.onnx").exists()


@pytest.mark.slow
def test_semantic_fpn_export_command_on_a_street_photo_with_dynamic_size(tmp_path, capsys):
    street = sorted((DATA_DIR / "camvid" / "images" / "val").glob("*.png"))
    if not street:
        pytest.skip(f"CamVid not found under {DATA_DIR}")
    model = randomize(metaformer.create_model(TINY_FPN), seed=6).eval()
    path = metaformer.save_checkpoint(model, tmp_path / "fpn.safetensors")
    output = tmp_path / "fpn.onnx"
    args = ["export", TINY_FPN, "--checkpoint", str(path), "--format", "onnx", "--output", str(output)]
    assert main([*args, "--check-image", str(street[0]), "--image-size", "256"]) == 0
    assert "largest logit difference" in capsys.readouterr().out and output.is_file()
    for shape in ((1, 3, 256, 256), (2, 3, 224, 320)):  # one file for every size
        check = check_onnx(output, model, torch.randn(*shape))
        assert check.shape == (shape[0], 11, *shape[2:]) and check.passed, check.max_abs_diff


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")  # the deprecated exporter warns at every Python branch it traces
@pytest.mark.parametrize("name", [TINY_RETINANET, TINY_MASK_RCNN])
def test_detectors_export_through_the_torchscript_exporter_as_the_readme_shows(name, tmp_path):
    import onnxruntime
    from torchvision.io import decode_image

    photos = sorted((DATA_DIR / "coco-mini").rglob("*.jpg"))
    if not photos:
        pytest.skip(f"COCO-mini not found under {DATA_DIR}")
    # The exporter traces the same graph at any size: small images, as few detections as the comparison needs (each
    # is a mask pasted in Python, when traced and when run).
    model = randomize(metaformer.create_model(name, min_size=192, max_size=320), seed=7).eval()
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = 0.0  # random weights score low: keep detections to compare
        model.roi_heads.detections_per_img = 12
    image = decode_image(str(photos[0])).float() / 255
    image = torch.nn.functional.interpolate(image[None], scale_factor=0.5, mode="bilinear")[0]
    path = tmp_path / "detector.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            ([image],),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            dynamic_axes={"image": [1, 2]},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for pixels in (image, torch.nn.functional.interpolate(image[None], size=(192, 256))[0]):
        outputs = session.run(None, {"image": pixels.numpy()})
        with torch.no_grad():
            expected = model([pixels])[0]
        scores = torch.from_numpy(next(o for o in outputs if o.ndim == 1 and o.dtype.kind == "f"))
        assert len(scores) == len(expected["scores"]) > 0
        # Sorted, as tied scores may come in another order. With random weights many boxes nearly coincide, and a
        # difference of 1e-6 can flip which of two survives NMS near the end of the list: the top ten must agree,
        # and nearly all of the rest.
        difference = (scores.sort(descending=True).values - expected["scores"].sort(descending=True).values).abs()
        assert difference[:10].max() <= 1e-4
        assert (difference <= 1e-4).float().mean() >= 0.9
