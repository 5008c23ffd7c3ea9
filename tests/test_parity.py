"""Same weights, same numbers: Hugging Face's PoolFormer (which reproduces the official model) and timm."""

from __future__ import annotations

import pytest
import torch

from metaformer.checkpoints import save_checkpoint

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

POOLFORMERS = ["poolformer_s12", "poolformer_s24", "poolformer_s36", "poolformer_m36", "poolformer_m48"]


@pytest.mark.parametrize("name", POOLFORMERS)
def test_logits_equal_hugging_face_and_features_equal_timm(name, random_model, tmp_path):
    model = random_model(name, seed=POOLFORMERS.index(name))
    save_checkpoint(model, tmp_path / "hf", to="hf")
    hf = transformers.PoolFormerForImageClassification.from_pretrained(tmp_path / "hf").eval()
    save_checkpoint(model, tmp_path / "timm.safetensors", to="timm")
    timm_model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "timm.safetensors")}
    ).eval()

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x).logits
        features = model.forward_features(x)
        timm_features = timm_model.forward_features(x)
    assert ours.std() > 0.1  # the logits carry signal, not just the head's bias
    assert (ours - theirs).abs().max() <= 1e-4
    assert (features - timm_features).abs().max() <= 1e-4
    # timm pools before its final norm (unlike the official head): our head gives the official logits.
    assert ours.argmax(-1).tolist() == theirs.argmax(-1).tolist()
