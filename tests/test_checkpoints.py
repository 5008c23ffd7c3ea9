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


# The official ``network`` list of each released S12 model, written out from the official model definitions:
# B = a stage's blocks (with the token mixer's own parameters), D = downsampling, P = position embedding.
OFFICIAL_LAYOUTS = {
    "poolformer_s12": ["B", "D", "B", "D", "B", "D", "B"],
    "metaformer_id_s12": ["B", "D", "B", "D", "B", "D", "B"],
    "metaformer_pppa_s12_224": ["B", "D", "B", "D", "B", "D", "P", "B:qkv"],
    "metaformer_ppaa_s12_224": ["B", "D", "B", "D", "P", "B:qkv", "D", "B:qkv"],
    "metaformer_pppf_s12_224": ["B", "D", "B", "D", "B", "D", "B:fc49"],
    "metaformer_ppff_s12_224": ["B", "D", "B", "D", "B:fc196", "D", "B:fc49"],
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_LAYOUTS))
def test_official_layouts(name, random_model, tmp_path):
    model = random_model(name)
    official = convert_state_dict(model.state_dict(), model.config, "official")
    depths = iter((2, 2, 6, 2))
    for index, entry in enumerate(OFFICIAL_LAYOUTS[name]):
        kind, _, mixer = entry.partition(":")
        keys = {k for k in official if k.startswith(f"network.{index}.")}
        if kind == "D":
            assert keys == {f"network.{index}.proj.weight", f"network.{index}.proj.bias"}
        elif kind == "P":
            assert keys == {f"network.{index}.pos_embed"}
        else:
            depth = next(depths)
            assert f"network.{index}.{depth - 1}.layer_scale_2" in keys
            assert f"network.{index}.{depth}.norm1.weight" not in keys
            if mixer == "qkv":
                assert official[f"network.{index}.0.token_mixer.qkv.weight"].shape[0] % 3 == 0
                assert f"network.{index}.0.token_mixer.qkv.bias" not in keys  # qkv_bias=False officially
            elif mixer.startswith("fc"):
                tokens = int(mixer[2:])
                assert official[f"network.{index}.0.token_mixer.fc.weight"].shape == (tokens, tokens)
            else:
                assert not any(".token_mixer." in k for k in keys)
    assert {k for k in official if not k.startswith("network.")} == {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
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
    model.reset_classifier(3, labels=("cat", "dog", "owl"))
    for to, name in (("metaformer", "w.safetensors"), ("hf", "folder")):
        path = save_checkpoint(model, tmp_path / name, to=to)
        loaded = metaformer.create_model("poolformer_s12", num_classes=3, checkpoint=path)
        assert loaded.labels == ("cat", "dog", "owl")


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
    with pytest.raises(FileNotFoundError, match="nowhere.pth: no such file"):
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


@pytest.mark.slow
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
    with pytest.raises(metaformer.ConfigError, match="has no released weights"):
        metaformer.create_model("poolformer_s12_relu", pretrained=True)


def test_convert_names_the_candidates_when_the_layout_is_ambiguous(random_model, tmp_path):
    path = save_checkpoint(random_model("metaformer_id_s12"), tmp_path / "weights.pth.tar", to="official")
    with pytest.raises(CheckpointError, match=r"fits several models \(poolformer_s12, metaformer_id_s12, .*--model"):
        metaformer.convert_checkpoint(path, tmp_path / "out.safetensors", "metaformer")
    out = metaformer.convert_checkpoint(
        path, tmp_path / "out.safetensors", "metaformer", model_name="metaformer_id_s12"
    )
    assert read_state_dict(out)[1]["model"] == "metaformer_id_s12"
    # Our files carry their architecture: loading one into another model is refused with the difference named.
    with pytest.raises(CheckpointError, match=r"saved from another architecture .* mixers=\('identity'"):
        metaformer.create_model("poolformer_s12", checkpoint=out)


def test_fine_tuned_checkpoint_keeps_its_head_and_labels(random_model, tmp_path):
    model = random_model("poolformer_s12", num_classes=4)
    model.reset_classifier(4, labels=["daisy", "rose", "tulip", "iris"])
    path = save_checkpoint(model, tmp_path / "flowers.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is re-initialised
        loaded = metaformer.create_model("poolformer_s12", checkpoint=path)
    assert loaded.num_classes == 4 and loaded.labels == ("daisy", "rose", "tulip", "iris")
    assert torch.equal(outputs(loaded), outputs(model))
    official = save_checkpoint(model, tmp_path / "flowers.pth.tar", to="official")  # no labels in this format
    assert metaformer.create_model("poolformer_s12", checkpoint=official).num_classes == 4


def test_in_memory_state_dicts_and_other_wrappers(random_model, tmp_path):
    model = random_model("poolformer_s12")
    official = convert_state_dict(model.state_dict(), model.config, "official")
    assert torch.equal(outputs(metaformer.create_model("poolformer_s12", checkpoint=official)), outputs(model))
    torch.save({"state_dict_ema": official, "epoch": 1}, tmp_path / "ema.pth.tar")
    assert torch.equal(
        outputs(metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "ema.pth.tar")), outputs(model)
    )
    # An mmdet/mmseg file: the backbone under "backbone.", beside a neck and heads that are not ours.
    backbone = random_model("poolformer_s12", features_only=True)
    mmdet = {
        "backbone." + k: v for k, v in convert_state_dict(backbone.state_dict(), backbone.config, "official").items()
    }
    mmdet["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 64, 1, 1)
    torch.save({"state_dict": mmdet, "meta": {}}, tmp_path / "retinanet.pth")
    loaded = metaformer.create_model("poolformer_s12", features_only=True, checkpoint=tmp_path / "retinanet.pth")
    assert all(torch.equal(a, b) for a, b in zip(loaded.eval()(X), backbone(X), strict=True))


def test_hugging_face_base_model_folder(random_model, tmp_path):
    model = random_model("poolformer_s12")
    folder = save_checkpoint(model, tmp_path / "hf", to="hf")
    state_dict, _ = read_state_dict(folder / "model.safetensors")
    base = {k[len("poolformer.") :]: v for k, v in state_dict.items() if k.startswith("poolformer.")}
    (folder / "model.safetensors").unlink()
    torch.save(base, folder / "pytorch_model.bin")  # PoolFormerModel: no final norm, no classifier
    with pytest.warns(CheckpointWarning, match="output norms"):
        backbone = metaformer.create_model("poolformer_s12", features_only=True, checkpoint=folder)
    torch.testing.assert_close(backbone.eval()(X)[-1], torch.nn.functional.group_norm(model.forward_features(X), 1))


def test_head_less_files_and_models(random_model, tmp_path):
    model = random_model("poolformer_s12")
    path = save_checkpoint(model, tmp_path / "w.pth.tar", to="official")
    with pytest.warns(CheckpointWarning, match="classifier head is not used"):
        pooled = metaformer.create_model("poolformer_s12", num_classes=0, checkpoint=path)
    assert pooled.eval()(X).shape == (2, 512)
    state_dict = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    torch.save(state_dict, tmp_path / "headless.pth")
    assert metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "headless.pth").num_classes == 0
    with pytest.warns(CheckpointWarning, match="fresh for 1000 classes .*has no head"):
        metaformer.create_model("poolformer_s12", num_classes=1000, checkpoint=tmp_path / "headless.pth")


def test_backbone_with_fewer_outputs_ignores_unused_norms(random_model, tmp_path):
    backbone = random_model("poolformer_s12", features_only=True)
    torch.save(convert_state_dict(backbone.state_dict(), backbone.config, "official"), tmp_path / "det.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        last3 = metaformer.create_model(
            "poolformer_s12", features_only=True, out_indices=(1, 2, 3), checkpoint=tmp_path / "det.pth"
        )
    assert all(torch.equal(a, b) for a, b in zip(last3.eval()(X), backbone(X)[1:], strict=True))


def test_position_embedding_is_resized_for_another_input_size(random_model, tmp_path):
    model = random_model("metaformer_pppa_s12_224")
    path = save_checkpoint(model, tmp_path / "pppa.pth.tar", to="official")
    with pytest.warns(CheckpointWarning, match="position embedding resized"):
        big = metaformer.create_model("metaformer_pppa_s12_224", image_size=320, checkpoint=path)
    assert big.stages[3].pos_embed.shape == (1, 512, 10, 10)
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():  # the same as resizing the table on the fly in the original model
        torch.testing.assert_close(big.eval()(x), model(x))


def test_empty_and_broken_files(tmp_path):
    (tmp_path / "empty.pth.tar").write_bytes(b"")  # an interrupted download
    with pytest.raises(CheckpointError, match="empty.pth.tar: not a readable PyTorch checkpoint"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "empty.pth.tar")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        metaformer.create_model("poolformer_s12", checkpoint=tmp_path / "hf")
    with pytest.raises(CheckpointError, match="are not tensors"):
        metaformer.create_model("poolformer_s12", checkpoint={"stem.proj.weight": [1, 2]})
