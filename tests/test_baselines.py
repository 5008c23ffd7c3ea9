"""The MetaFormer Baselines (IdentityFormer, RandFormer, PoolFormerV2, ConvFormer, CAFormer): exact sizes, timm's
models and the official code's structure computing what ours computes, every file format, fusing."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from baselines_reference import official_forward
from conftest import assert_equal_to_timm_both_ways, randomize, slow_but

import metaformer
from metaformer.checkpoints import open_checkpoint
from metaformer.checkpoints.formats import convert_state_dict
from metaformer.models.metaformer import MetaFormer
from metaformer.models.pretrained import PAPER, RELEASES, TAGGED
from metaformer.models.zoo import get_spec

# Trainable parameters with 1000 classes, as the official code gives them; RandFormer adds its frozen matrices.
PARAMS = {
    "identityformer": {"s12": 11_891_712, "s24": 21_341_464, "s36": 30_791_216, "m36": 56_077_168, "m48": 73_346_056},
    "convformer": {"s18": 26_774_448, "s36": 40_012_152, "m36": 57_051_640, "b36": 99_882_616},
    "caformer": {"s18": 26_341_656, "s36": 39_297_102, "m36": 56_204_878, "b36": 98_753_614},
}
PARAMS["poolformerv2"] = PARAMS["randformer"] = PARAMS["identityformer"]
FROZEN = {"s12": 235_298, "s24": 470_596, "s36": 705_894, "m36": 705_894, "m48": 941_192}
SMALLEST = ["identityformer_s12", "randformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18"]
IN_TIMM = ["poolformerv2_s12", "convformer_s18", "caformer_s18"]


@pytest.mark.parametrize("name", [f"{family}_{size}" for family, sizes in PARAMS.items() for size in sizes])
def test_exact_parameter_counts(name):
    family, size = name.split("_")
    with torch.device("meta"):
        model = MetaFormer(get_spec(name).config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert trainable == PARAMS[family][size]
    assert frozen == (FROZEN[size] if family == "randformer" else 0)


@pytest.mark.parametrize("name", slow_but(list(PAPER), SMALLEST))
def test_macs_as_the_paper_at_224_and_384(name):
    """fvcore's count, as the paper's table: the official norms are elementwise operations, which it skips."""
    config = get_spec(name).config
    macs_224, macs_384 = PAPER[name][1]
    with torch.device("meta"):  # shapes only: nothing is computed
        assert round(metaformer.count_macs(MetaFormer(config)) / 1e9, 1) == macs_224
        if macs_384:
            model = MetaFormer(dataclasses.replace(config, image_size=384))
            assert round(metaformer.count_macs(model, 384) / 1e9, 1) == macs_384


def test_every_release_is_spelled_and_evaluated_as_timm_has_it():
    timm = pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg

    ours = {name: release for name, release in RELEASES.items() if release.hf_hub_id}
    archs = {release.architecture for release in ours.values()}
    assert set(ours) == {name for name in timm.list_pretrained() if name.split(".")[0] in archs}  # all 62
    for name, release in ours.items():
        cfg = get_pretrained_cfg(name)
        assert (cfg.hf_hub_id, cfg.input_size[-1], cfg.crop_pct, cfg.num_classes, cfg.interpolation, cfg.license) == (
            release.hf_hub_id,
            release.image_size,
            release.crop_pct,
            release.num_classes,
            release.interpolation,
            release.license,
        )
    assert (
        len(TAGGED) == 77 and RELEASES["caformer_b36.sail_in22k_ft_in1k_384"].top1 == 88.1
    )  # 55 + 5 + 5 InceptionNeXt + 12 MambaOut
    assert len(RELEASES) == 82 and not RELEASES["metaformer_ppaa_s12_224"].tag  # and the 5 untagged hybrids
    assert RELEASES["caformer_m36.sail_in22k"].url.endswith("/caformer/caformer_m36_in21k.pth")  # not "m364"
    assert RELEASES["convformer_b36.sail_in22k_ft_in1k_384"].url.endswith("convformer_b36_384_in21ft1k.pth")


def perturbed(name: str, seed: int = 0, **overrides: object) -> MetaFormer:
    """The model with every scalar and per-channel weight moved off its initial value (residual scales 0.3-1.2,
    StarReLU's scale and bias, the norms' affines), so that a mixed-up parameter shows in the outputs."""
    return randomize(metaformer.create_model(name, **overrides), seed).eval()


@pytest.mark.parametrize(
    "name",
    slow_but([f"{family}_{size}" for family in ("poolformerv2", "convformer", "caformer") for size in PARAMS[family]],
          IN_TIMM),
)  # fmt: skip
def test_equal_to_timm_both_ways(name):
    timm = pytest.importorskip("timm")
    # The larger sizes differ from the three in timm's tests only in depths and widths: two blocks a stage, at their
    # own widths, check each stage of them (timm's model cut to the same blocks).
    depths = {} if name in IN_TIMM else {"depths": tuple(min(d, 2) for d in get_spec(name).config.depths)}
    ours = perturbed(name, **depths)
    with torch.device("meta"):  # every weight comes from ours: none initialised only to be replaced
        theirs = timm.create_model(name).eval()
    for stage, depth in zip(theirs.stages, ours.config.depths, strict=True):
        stage.blocks = stage.blocks[:depth]
    theirs.load_state_dict(convert_state_dict(ours.state_dict(), ours.config, "timm"), assign=True)
    if ours.config.head == "mlp":
        # timm's MLP head normalises with eps 1e-6; the official code (and ours) with nn.LayerNorm's 1e-5.
        theirs.head.fc.norm.eps = 1e-5
    side = 224 if name in IN_TIMM else 96  # the larger ones differ only in depths and widths: a smaller input
    # Intermediates too: the 13 timm Baselines architectures.
    assert_equal_to_timm_both_ways(name, ours, theirs, torch.randn(2, 3, side, side), **depths)


@pytest.mark.parametrize("name", slow_but(SMALLEST, {"convformer_s18", "caformer_s18"}))
def test_equal_to_the_official_structure_and_its_files(name, tmp_path):
    ours = perturbed(name)
    official = convert_state_dict(ours.state_dict(), ours.config, "official")
    assert all(not k.startswith(("stem.", "network.")) for k in official)  # the Baselines' own names
    x = torch.randn(2, 3, 224, 224)
    family = name.split("_")[0]
    with torch.no_grad():
        expected = official_forward(official, family, ours.config.depths, x)
        assert torch.allclose(ours(x), expected, atol=1e-4, rtol=0)
        path = tmp_path / f"{name}.pth"
        torch.save(official, path)  # a plain state_dict, as the official release
        loaded = metaformer.create_model(name, checkpoint=path, strict=True).eval()
        assert torch.allclose(loaded(x), expected, atol=1e-4, rtol=0)
    # IdentityFormer and PoolFormerV2 files have the same layout: the release's file name tells them apart.
    assert metaformer.api.infer_model_name(open_checkpoint(path)) == name


@pytest.mark.parametrize("name", SMALLEST)
def test_fused_equals_plain(name):
    model = perturbed(name)
    fused = metaformer.fuse(model)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-4, rtol=0)


def test_features_and_fresh_heads():
    features = metaformer.create_model("caformer_s18", features_only=True)
    maps = features(torch.randn(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 56, 56), (128, 28, 28), (320, 14, 14), (512, 7, 7)]
    assert features.strides == [4, 8, 16, 32]
    model = perturbed("convformer_s18")
    hidden = model.head.fc1.weight.clone()
    model.reset_classifier(7)  # fine-tuning keeps the MLP head's trained hidden layer; new class rows
    assert torch.equal(model.head.fc1.weight, hidden) and model.head.fc2.out_features == 7


def test_randformer_takes_only_its_size():
    model = metaformer.create_model("randformer_s12")
    with pytest.raises(metaformer.ConfigError, match="fixed 14x14 token grid but got 16x16"):
        model(torch.randn(1, 3, 256, 256))


@pytest.mark.slow
def test_formats_without_the_baselines_are_refused(tmp_path):
    model = metaformer.create_model("caformer_s18")
    with pytest.raises(metaformer.ConfigError, match="transformers has PoolFormer v1 only"):
        metaformer.save_checkpoint(model, tmp_path / "hf", "hf")
    with pytest.raises(metaformer.ConfigError, match="timm has no identityformer"):  # it would load as PoolFormerV2
        metaformer.save_checkpoint(metaformer.create_model("identityformer_s12"), tmp_path / "i.safetensors", "timm")
    with pytest.raises(metaformer.CheckpointError, match="the mmcls format has PoolFormer v1 only"):
        convert_state_dict(model.state_dict(), model.config, "mmcls")
    for to, name in (("official", "c.pth"), ("timm", "c_timm.safetensors"), ("metaformer", "c.safetensors")):
        again = metaformer.create_model(
            "caformer_s18", checkpoint=metaformer.save_checkpoint(model, tmp_path / name, to)
        )
        assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_the_readme_table_is_the_metadata():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = readme.split("<!-- baselines-table -->")[1].strip().split("\n\n")[0].splitlines()[2:]
    assert len(rows) == len(PAPER) == 23
    for row, (arch, (top1s, (macs_224, macs_384))) in zip(rows, PAPER.items(), strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        family, size = arch.split("_")
        assert cells[0] == f"`{arch}`" and float(cells[1].split()[0]) == round(PARAMS[family][size] / 1e6, 3)
        assert cells[2] == (f"{macs_224} / {macs_384}" if macs_384 else f"{macs_224}")
        assert [float(c) if c else None for c in cells[3:7]] == [*top1s[:4], *[None] * (4 - len(top1s[:4]))]


@pytest.mark.parametrize(
    "name", ["fpn_identityformer_s12", "fpn_poolformerv2_s12", "fpn_convformer_s18", "fpn_caformer_s18"]
)
def test_semantic_fpn_on_every_family(name):
    model = metaformer.create_model(name, num_classes=5).train()
    logits = model(torch.randn(2, 3, 97, 130))
    assert logits.shape == (2, 5, 97, 130)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_detectors_on_convformer_and_caformer_start_from_a_timm_classifier():
    timm = pytest.importorskip("timm")
    classifier = timm.create_model("caformer_s18")
    with pytest.warns(metaformer.CheckpointWarning, match="loaded the backbone"):
        detector = metaformer.create_model(
            "mask_rcnn_caformer_s18", checkpoint=classifier.state_dict(), min_size=128, max_size=160
        ).eval()
    trunk = detector.backbone.body
    assert torch.equal(
        trunk.stages[3].blocks[0].token_mixer.qkv.weight, classifier.stages[3].blocks[0].token_mixer.qkv.weight
    )
    with torch.no_grad():
        found = detector([torch.rand(3, 120, 150)])[0]
    assert set(found) == {"boxes", "labels", "scores", "masks"}
    assert "retinanet_convformer_s36" in metaformer.list_models(task="detection")
    assert not metaformer.list_models("fpn_randformer")  # its fixed 224x224 grid cannot take dense inputs


class _Hub(http.server.BaseHTTPRequestHandler):
    """The Hugging Face Hub's file endpoint (``/{repo}/resolve/{revision}/{file}``) over a local folder."""

    root: Path
    asked: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        self.asked.append(self.path)
        if len(parts) >= 5 and parts[2] == "resolve":
            path = self.root / parts[0] / parts[1] / "/".join(parts[4:])
            return path if path.is_file() else None
        return None

    def _answer(self, body: bool) -> None:
        path = self._file()
        if path is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)


@pytest.fixture
def hub(tmp_path):
    """A real HTTP server on the loopback interface standing in for the Hub."""
    handler = type("Hub", (_Hub,), {"root": tmp_path / "hub", "asked": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_pretrained_tags_download_from_the_hub_and_predict(hub, tmp_path, imagenet_samples):
    handler, endpoint = hub
    model = perturbed("caformer_s18")  # the ImageNet-1k release; the 21k head's 45 M weights add time, not checks
    folder = handler.root / "timm" / "caformer_s18.sail_in1k"
    folder.mkdir(parents=True)
    metaformer.save_checkpoint(model, folder / "model.safetensors", "timm")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "t")}
    command = [
        sys.executable,
        "-m",
        "metaformer",
        "predict",
        str(imagenet_samples[0]),
        "--model",
        "caformer_s18.sail_in1k",
        "--pretrained",
        "--json",
        "--no-fuse",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert handler.asked[-1] == "/timm/caformer_s18.sail_in1k/resolve/main/model.safetensors"
    found = json.loads(done.stdout)
    image = metaformer.ImageProcessor.for_model(model)(str(imagenet_samples[0]))
    with torch.no_grad():
        expected = model.eval()(image).softmax(-1)[0]
    assert found["topk"][0]["index"] == int(expected.argmax())
    # Offline, with nothing cached: one line naming both sources and what to do.
    offline = {**env, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9"}  # the official host unreachable
    command[command.index("caformer_s18.sail_in1k")] = "caformer_s18.sail_in22k_ft_in1k"  # none cached
    done = subprocess.run(command, capture_output=True, text=True, env=offline, timeout=300)
    assert done.returncode == 1
    error = done.stderr
    assert (
        "could not download the weights of caformer_s18.sail_in22k_ft_in1k" in error
        and "Hugging Face Hub timm/" in error
    )
    assert "caformer_s18_in21ft1k.pth on another machine and pass it with checkpoint=PATH" in error
    with pytest.raises(metaformer.ConfigError, match="caformer_s18 has no release 'sail_in21k'; its releases: "):
        metaformer.create_model("caformer_s18.sail_in21k")
    assert metaformer.create_model("caformer_s18.sail_in22k").num_classes == 21841
    assert metaformer.create_model("caformer_s18", pretrained=None).num_classes == 1000  # a falsy value: no weights
    assert metaformer.create_model("caformer_s18.sail_in1k_384").config.image_size == 384
    # A tagged name is a model name everywhere: its processor evaluates at the release's size and crop.
    processor = metaformer.ImageProcessor.for_model("poolformer_m36.sail_in1k")
    assert (processor.size, processor.crop_pct) == (224, 0.95)
    assert metaformer.ImageProcessor.for_model("convformer_s18.sail_in22k_ft_in1k_384").size == 384


def test_an_in22k_head_becomes_an_in1k_head_as_the_official_script_makes_it():
    model = metaformer.create_model("convformer_s18.sail_in22k")
    with torch.no_grad():
        model.head.fc2.weight.normal_()
    in1k = metaformer.in1k_head_from_in22k(model)
    old, new = model.head.fc2.weight, in1k.head.fc2.weight
    assert in1k.num_classes == 1000 and model.num_classes == 21841
    # tench (n01440764) is 21k row 359; the last 1k class (toilet tissue, n15075141) row 21815
    assert torch.equal(new[0], old[359]) and torch.equal(new[999], old[21815])
    assert torch.allclose(new[850], old.mean(0))  # teddy bear: not an ImageNet-21k class
    assert torch.equal(in1k.head.fc1.weight, model.head.fc1.weight)
    with pytest.raises(metaformer.ConfigError, match="expected a model with the 21841 ImageNet-21k classes"):
        metaformer.in1k_head_from_in22k(in1k)


def test_a_timm_hub_folder_loads_with_its_name_and_evaluation_size(tmp_path):
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf  # what timm's push_to_hf_hub uploads, written locally

    theirs = timm.create_model("caformer_s18", pretrained_cfg_overlay={"input_size": (3, 384, 384)}).eval()
    save_for_hf(theirs, tmp_path / "folder")
    checkpoint = open_checkpoint(tmp_path / "folder")
    assert metaformer.api.infer_model_name(checkpoint) == "caformer_s18"
    ours = metaformer.create_model("caformer_s18", checkpoint=tmp_path / "folder", strict=True).eval()
    assert (ours.config.image_size, ours.pretrained_cfg.crop_pct, ours.pretrained_cfg.input_size) == (
        384,
        1.0,
        (3, 384, 384),
    )
    theirs.head.fc.norm.eps = 1e-5  # see test_equal_to_timm_both_ways
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-4, rtol=0)
