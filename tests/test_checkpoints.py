"""Every checkpoint format round trip, conversion, download, and every way a checkpoint can be wrong."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
import warnings
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import metaformer
from metaformer.checkpoints import (
    CheckpointError,
    CheckpointWarning,
    convert_state_dict,
    detect_format,
    read_state_dict,
    save_checkpoint,
)

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


@pytest.mark.parametrize(
    "to, filename",
    [
        ("metaformer", "w.safetensors"),
        ("official", "w.pth.tar"),
        ("timm", "w.safetensors"),
        ("timm", "w.pth"),
        ("hf", "folder"),
    ],
)
def test_round_trip_every_format(to, filename, random_model, tmp_path):
    model = random_model("poolformer_s12")
    path = save_checkpoint(model, tmp_path / filename, to=to)
    assert detect_format(read_state_dict(path)[0]) == to
    loaded = metaformer.create_model("poolformer_s12", checkpoint=path)
    assert torch.equal(outputs(loaded), outputs(model))


@pytest.mark.parametrize(
    "name",
    ["metaformer_pppa_s12_224", "metaformer_ppaa_s12_224", "metaformer_ppff_s12_224", "metaformer_id_s12"],
)
def test_official_layout_of_hybrids(name, random_model, tmp_path):
    model = random_model(name)
    official = convert_state_dict(model.state_dict(), model.config, "official")
    if name == "metaformer_pppa_s12_224":  # position embedding is its own entry before the last stage
        assert official["network.6.pos_embed"].shape == (1, 512, 7, 7) and "network.7.0.norm1.weight" in official
        assert "network.6.0.token_mixer.qkv.weight" not in official
    if name == "metaformer_ppaa_s12_224":
        assert official["network.4.pos_embed"].shape == (1, 320, 14, 14)
        assert "network.5.0.token_mixer.qkv.weight" in official and "network.6.proj.weight" in official
    if name == "metaformer_ppff_s12_224":
        assert official["network.4.0.token_mixer.fc.weight"].shape == (196, 196)
    torch.save(official, tmp_path / "w.pth.tar")
    loaded = metaformer.create_model(name, checkpoint=tmp_path / "w.pth.tar")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_hf_folder_with_pytorch_model_bin(random_model, tmp_path):
    model = random_model("poolformer_s12")
    folder = save_checkpoint(model, tmp_path / "hf", to="hf")
    state_dict, _ = read_state_dict(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state_dict, folder / "pytorch_model.bin")
    assert torch.equal(outputs(metaformer.create_model("poolformer_s12", checkpoint=folder)), outputs(model))


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_wrapped_and_ddp_prefixed_official_files(wrapper, random_model, tmp_path):
    model = random_model("poolformer_s12")
    official = convert_state_dict(model.state_dict(), model.config, "official")
    official = {"module." + k: v for k, v in official.items()}
    torch.save({wrapper: official, "epoch": 3} if wrapper else official, tmp_path / "w.pth.tar")
    assert torch.equal(
        outputs(metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "w.pth.tar")), outputs(model)
    )


def test_labels_travel_with_our_format_and_hf(random_model, tmp_path):
    model = random_model("poolformer_s12", num_classes=3)
    model.config = model.config.__class__(**{**model.config.to_dict(), "labels": ("cat", "dog", "owl")})
    for to, name in (("metaformer", "w.safetensors"), ("hf", "folder")):
        path = save_checkpoint(model, tmp_path / name, to=to)
        loaded = metaformer.create_model("poolformer_s12", num_classes=3, checkpoint=path)
        assert loaded.config.labels == ("cat", "dog", "owl")


def test_wrong_model_names_missing_and_unexpected_keys(random_model, tmp_path):
    path = save_checkpoint(random_model("poolformer_s24"), tmp_path / "s24.pth.tar", to="official")
    with pytest.raises(CheckpointError) as error:
        metaformer.create_model("poolformer_s12", checkpoint=path)
    message = str(error.value)
    assert "s24.pth.tar (official format) does not fit poolformer_s12" in message
    assert "unexpected in the checkpoint: network.0.2." in message and "missing from" not in message


def test_shape_conflicts_are_named(random_model, tmp_path):
    path = save_checkpoint(random_model("poolformer_m36"), tmp_path / "m36.pth.tar", to="official")
    with pytest.raises(CheckpointError, match=r"shape conflicts: .*stem.proj.weight \(checkpoint \(96, 3, 7, 7\)"):
        metaformer.create_model("poolformer_s36", checkpoint=path)


def test_missing_keys_are_named(random_model, tmp_path):
    state_dict = random_model("poolformer_s12").state_dict()
    del state_dict["stages.2.blocks.5.mlp.fc1.weight"]
    torch.save(state_dict, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: stages.2.blocks.5.mlp.fc1.weight"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "partial.pth")


def test_new_number_of_classes_reinitialises_the_head(random_model, tmp_path):
    source = random_model("poolformer_s12")
    path = save_checkpoint(source, tmp_path / "w.pth.tar", to="official")
    with pytest.warns(CheckpointWarning, match="head initialised fresh for 5 classes .* has 1000"):
        model = metaformer.create_model("poolformer_s12", num_classes=5, checkpoint=path)
    assert model.head.weight.shape == (5, 512)
    torch.testing.assert_close(model.eval().forward_features(X), source.forward_features(X))


def test_features_only_from_a_classification_checkpoint(random_model, tmp_path):
    source = random_model("poolformer_s12")
    path = save_checkpoint(source, tmp_path / "w.pth.tar", to="official")
    with pytest.warns(CheckpointWarning, match=r"output norms of stages \['0', '1', '2', '3'\] are initialised fresh"):
        backbone = metaformer.create_model("poolformer_s12", features_only=True, checkpoint=path)
    stage4 = backbone.eval()(X)[-1]
    # Fresh norms are plain GroupNorm: the same map as normalising the classifier's last stage.
    expected = torch.nn.functional.group_norm(source.forward_features(X), 1)
    torch.testing.assert_close(stage4, expected)


def test_official_fork_feat_checkpoint_loads_its_norms(random_model, tmp_path):
    backbone = random_model("poolformer_s12", features_only=True)
    official = convert_state_dict(backbone.state_dict(), backbone.config, "official")
    assert {"norm0.weight", "norm2.weight", "norm4.weight", "norm6.weight"} <= set(official)
    torch.save(official, tmp_path / "det.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = metaformer.create_model("poolformer_s12", features_only=True, checkpoint=tmp_path / "det.pth")
    for a, b in zip(loaded.eval()(X), backbone(X), strict=False):
        assert torch.equal(a, b)


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": {}, "args": Namespace(lr=0.1)}, tmp_path / "train.pth.tar")
    with pytest.raises(CheckpointError, match="refused to load: the file holds Python objects"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "train.pth.tar")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint" * 50)
    with pytest.raises(CheckpointError, match="junk.pth: not a readable PyTorch checkpoint"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "nowhere.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "folder")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "other.pth")


def test_hf_export_refuses_models_hf_cannot_express(random_model, tmp_path):
    with pytest.raises(ValueError, match="only pooling mixers with GroupNorm"):
        save_checkpoint(random_model("metaformer_pppa_s12_224"), tmp_path / "hf", to="hf")


def test_convert_chain_through_every_format(random_model, tmp_path):
    model = random_model("poolformer_s12", seed=7)
    official = save_checkpoint(model, tmp_path / "poolformer_s12.pth.tar", to="official")  # the release's name
    ours = metaformer.convert_checkpoint(official, tmp_path / "b.safetensors", "metaformer")
    timm_file = metaformer.convert_checkpoint(ours, tmp_path / "c.pth", "timm")
    hf_folder = metaformer.convert_checkpoint(timm_file, tmp_path / "d", "hf")
    back = metaformer.convert_checkpoint(hf_folder, tmp_path / "e.safetensors", "metaformer")
    first, last = read_state_dict(ours)[0], read_state_dict(back)[0]
    assert first.keys() == last.keys() and all(torch.equal(first[k], last[k]) for k in first)
    assert read_state_dict(back)[1]["model"] == "poolformer_s12"
    assert json.loads((hf_folder / "config.json").read_text())["hidden_sizes"] == [64, 128, 320, 512]


# ------------------------------------------------------------------------------ pretrained=True (download)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """A real HTTP server on the loopback interface standing in for the release host."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("METAFORMER_WEIGHTS_URL", f"http://127.0.0.1:{server.server_address[1]}/v1.0")
    yield served / "v1.0"
    server.shutdown()


def test_pretrained_downloads_once_and_checks_its_hash(weights_server, random_model, tmp_path):
    weights_server.mkdir()
    model = random_model("poolformer_s12")
    save_checkpoint(model, weights_server / "poolformer_s12.pth.tar", to="official")
    loaded = metaformer.create_model("poolformer_s12", pretrained=True)
    assert torch.equal(outputs(loaded), outputs(model))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "poolformer_s12.pth.tar"
    assert cached.exists() and len(cached.with_name(cached.name + ".sha256").read_text().strip()) == 64
    (weights_server / "poolformer_s12.pth.tar").unlink()  # second use reads the cache only
    assert torch.equal(outputs(metaformer.create_model("poolformer_s12", pretrained=True)), outputs(model))
    with open(cached, "r+b") as handle:  # a damaged cache file is caught, not loaded
        handle.seek(1000)
        handle.write(b"XXXX")
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        metaformer.create_model("poolformer_s12", pretrained=True)


def test_pretrained_offline_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port with nothing listening: the download fails at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("METAFORMER_WEIGHTS_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(CheckpointError, match=r"(?s)could not download.*pass it with checkpoint=PATH"):
        metaformer.create_model("poolformer_s12", pretrained=True)
    with pytest.raises(CheckpointError, match="has no released weights"):
        metaformer.create_model("poolformer_s12_relu", pretrained=True)


def test_convert_names_the_candidates_when_the_layout_is_ambiguous(random_model, tmp_path):
    path = save_checkpoint(random_model("metaformer_id_s12"), tmp_path / "weights.pth.tar", to="official")
    with pytest.raises(CheckpointError, match=r"fits several models \(poolformer_s12, metaformer_id_s12, .*--model"):
        metaformer.convert_checkpoint(path, tmp_path / "out.safetensors", "metaformer")
    out = metaformer.convert_checkpoint(path, tmp_path / "out.safetensors", "metaformer", model_name="metaformer_id_s12")
    assert read_state_dict(out)[1]["model"] == "metaformer_id_s12"
    # Our files carry their architecture: loading one into another model is refused with the difference named.
    with pytest.raises(CheckpointError, match=r"saved from another architecture .* mixers=\('identity'"):
        metaformer.create_model("poolformer_s12", checkpoint=out)
