"""Same weights, same numbers: Hugging Face's PoolFormer (which reproduces the official model) and timm."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_intermediates_equal, slow_but
from safetensors.torch import load_file

import metaformer
from metaformer.checkpoints import save_checkpoint
from metaformer.models.zoo import get_spec

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

pytestmark = pytest.mark.peer  # compared against a peer library

POOLFORMERS = ["poolformer_s12", "poolformer_s24", "poolformer_s36", "poolformer_m36", "poolformer_m48"]


@pytest.mark.parametrize("name", slow_but(POOLFORMERS, {"poolformer_s12"}))
def test_logits_equal_hugging_face_and_features_equal_timm(name, random_model, tmp_path):
    # The larger sizes at two blocks a stage and their own widths (Hugging Face's config takes the depths; timm's
    # model is cut to the same blocks): each stage's blocks are alike, so depth adds time and no check.
    depths = {} if name == "poolformer_s12" else {"depths": tuple(min(d, 2) for d in get_spec(name).config.depths)}
    model = random_model(name, seed=POOLFORMERS.index(name), **depths)
    save_checkpoint(model, tmp_path / "hf", to="hf")
    hf = transformers.PoolFormerForImageClassification.from_pretrained(tmp_path / "hf").eval()
    save_checkpoint(model, tmp_path / "timm.safetensors", to="timm")
    if not depths:  # timm reads the file through its own pretrained-weights path
        overlay = {"file": str(tmp_path / "timm.safetensors")}
        timm_model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    else:
        timm_model = timm.create_model(name).eval()
        for stage, depth in zip(timm_model.stages, model.config.depths, strict=True):
            stage.blocks = stage.blocks[:depth]
        timm_model.load_state_dict(load_file(tmp_path / "timm.safetensors"))

    side = 224 if name == "poolformer_s12" else 96  # every weight counts at any size: the larger ones at 96 px
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x).logits
        features = model.forward_features(x)
        timm_features = timm_model.forward_features(x)
    assert ours.std() > 0.1  # the logits carry signal, not just the head's bias
    assert (ours - theirs).abs().max() <= 1e-4
    assert (features - timm_features).abs().max() <= 1e-4
    assert_intermediates_equal(model, timm_model, x[:1])
    # timm pools before its final norm (unlike the official head): our head gives the official logits.
    assert ours.argmax(-1).tolist() == theirs.argmax(-1).tolist()


def test_files_written_by_hugging_face_and_timm_load_here(tmp_path):
    """The other direction: weights saved by the peers themselves, not by our exporter."""
    torch.manual_seed(0)
    hf = transformers.PoolFormerForImageClassification(
        transformers.PoolFormerConfig(num_labels=7, id2label={i: f"c{i}" for i in range(7)})
    ).eval()
    timm_model = timm.create_model("poolformer_s12", num_classes=7).eval()
    for model in (hf, timm_model):
        for name, param in model.named_parameters():  # non-trivial weights
            if "layer_scale" in name:
                param.data.uniform_(0.1, 1.0)
    hf.save_pretrained(tmp_path / "hf")
    torch.save(timm_model.state_dict(), tmp_path / "timm.pth")
    x = torch.randn(2, 3, 96, 128)
    ours_hf = metaformer.create_model("poolformer_s12", num_classes=7, checkpoint=tmp_path / "hf").eval()
    ours_timm = metaformer.create_model("poolformer_s12", num_classes=7, checkpoint=tmp_path / "timm.pth").eval()
    with torch.no_grad():
        assert (ours_hf(x) - hf(x).logits).abs().max() <= 1e-4
        assert (ours_timm.forward_features(x) - timm_model.forward_features(x)).abs().max() <= 1e-4
    assert ours_hf.labels == tuple(f"c{i}" for i in range(7))
