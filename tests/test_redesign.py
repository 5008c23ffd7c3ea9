"""The reference model and its swaps: mixers from user code, hooks and subclasses honoured in training and in
``fuse``, every row of the fast-path table against the reference, ``forward_intermediates`` against timm, and the
task table."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize
from torch import nn

import metaformer
from metaformer.fast import fuse, use_custom_backward
from metaformer.fast.table import SWAPS, Swap
from metaformer.models.config import MetaFormerConfig
from metaformer.models.mixers import Pooling, register_mixer
from metaformer.models.zoo import get_spec
from metaformer.task_table import TASKS, task

TINY = MetaFormerConfig(depths=(1, 1, 2, 1), widths=(16, 24, 32, 48), num_classes=5, image_size=64)


class CountingPooling(Pooling):
    """A mixer of the user's that computes something else than ``Pooling``: a fast path written for ``Pooling``
    must not take its place."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountingPooling.calls += 1
        return 2.0 * super().forward(x)


register_mixer("test_counting_pooling")(CountingPooling)
if "test_counting" not in metaformer.list_models():
    metaformer.register_model("test_counting", TINY.replace(mixers=("test_counting_pooling",) * 4))
    metaformer.register_model("test_tiny_pool", TINY)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [block for stage in model.stages for block in stage.blocks]


@pytest.mark.parametrize("custom_backward", [False, True])
def test_training_runs_the_reference_modules_a_mixer_subclass_included(custom_backward, tmp_path):
    """`metaformer train` runs the model's own mixer (here a subclass of the pooling a fast path was written for),
    by default and with --custom-backward, whose pooling function must not take its place."""
    from test_train import subset

    from metaformer.cli import main

    data = subset(tmp_path / "data", ["airplane", "frog"], train=8, val=4)
    before = CountingPooling.calls
    flags = ["--custom-backward"] if custom_backward else []
    assert (
        main(
            [
                "train",
                str(data),
                "--model",
                "test_counting",
                "--output",
                str(tmp_path / "run"),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--image-size",
                "64",
                "--num-workers",
                "0",
                "--no-progress",
                *flags,
            ]
        )
        == 0
    )
    assert CountingPooling.calls - before >= 2 * sum(TINY.depths)  # a training step and the evaluation, each block


def test_hooks_on_the_reference_modules_fire_in_training():
    from metaformer.engine.task import RunSettings

    assert not RunSettings(data="d", model="m", output="o").custom_backward  # training runs the reference modules
    model = torch.manual_seed(0) and metaformer.create_model("test_tiny_pool")
    seen: list[str] = []
    for name, module in model.named_modules():
        if name.endswith(("norm1", "token_mixer", "mlp.fc1", "mlp.act")):
            module.register_forward_hook(lambda m, i, o, name=name: seen.append(name))
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(seen) == 4 * sum(TINY.depths)  # every block's four hooked modules ran


def test_training_swaps_blocks_only_when_asked_and_honours_hooks_then():
    model = randomize(metaformer.create_model("test_tiny_pool")).train()
    reference = copy.deepcopy(model)
    swapped = use_custom_backward(model)
    assert swapped == [f"stages.{s}.blocks.{b}" for s, n in enumerate(TINY.depths) for b in range(n)]
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)
    calls = []
    block = _blocks(model)[0]
    block.norm1.register_forward_hook(lambda *args: calls.append("norm1"))
    block.mlp.fc1.register_forward_hook(lambda *args: calls.append("fc1"))
    model(x).sum().backward()
    assert calls == ["norm1", "fc1"]  # a hooked branch runs through its modules again


def test_a_mixer_subclass_is_honoured_in_training_and_in_fuse():
    model = randomize(metaformer.create_model("test_counting")).eval()
    assert all(type(b.token_mixer) is CountingPooling for b in _blocks(model))
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    fused = fuse(model)
    kept = [m for m in fused.modules() if type(m) is CountingPooling]
    assert len(kept) == sum(TINY.depths)  # kept, not replaced by the pooling it derives from
    torch.testing.assert_close(fused(x), expected, atol=1e-4, rtol=1e-4)
    trained = copy.deepcopy(model).train()
    assert use_custom_backward(trained)  # the MLP branches still fit
    before = CountingPooling.calls
    torch.testing.assert_close(trained.eval()(x), expected, atol=1e-4, rtol=1e-4)
    assert CountingPooling.calls - before == sum(TINY.depths)


def test_a_mixer_swapped_after_construction_is_honoured():
    model = randomize(metaformer.create_model("test_tiny_pool")).eval()
    x = torch.randn(2, 3, 64, 64)
    use_custom_backward(model)
    for block in _blocks(model):
        block.token_mixer = CountingPooling(block.dim)
    reference = metaformer.create_model("test_counting").eval()
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)
    fused = fuse(model)
    torch.testing.assert_close(fused(x), reference(x), atol=1e-4, rtol=1e-4)


def _row_id(swap: Swap) -> str:
    return f"{swap.use}-{swap.part}-{swap.example}-{swap.name.split()[0]}"


@pytest.mark.parametrize("swap", SWAPS, ids=_row_id)
def test_every_row_of_the_table_computes_the_reference(swap: Swap):
    """Each row on its example model, with only that row applied, against the reference modules."""
    from metaformer.fast.apply import swap_modules

    config = get_spec(swap.example).config
    small = config.replace(depths=(1, 1, 1, 1), image_size=64, num_classes=10)
    model = randomize(metaformer.models.metaformer.MetaFormer(small)).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    if swap.part == "module":
        candidates = [m for m in model.modules() if swap.fits(m) is None]
        if swap.use == "int8":  # applies to the folded MLP: fold first
            model = fuse(model)
            candidates = [m for m in model.modules() if swap.fits(m) is None]
        assert candidates, f"{swap.name} fits no module of {swap.example}"
        if swap.use == "inference":
            result = fuse(model)
        else:
            assert swap_modules(model, swap.use)
            result = model
    else:
        blocks = _blocks(model)
        assert all(swap.fits(b) is None for b in blocks), [swap.fits(b) for b in blocks]
        result = fuse(model) if swap.use == "inference" else model.train()
        if swap.use == "training":
            use_custom_backward(result)
            result.eval()
    with torch.no_grad():
        torch.testing.assert_close(result(x), expected, atol=swap.tolerance, rtol=swap.tolerance)


def test_every_row_fits_its_own_example_and_refuses_a_subclass():
    for swap in SWAPS:
        assert get_spec(swap.example).task == "classification"
    block = _blocks(metaformer.create_model("test_counting"))[0]
    token_rows = [s for s in SWAPS if s.part == "token"]
    reasons = [s.fits(block) for s in token_rows]
    assert all(r is not None for r in reasons)
    assert any("CountingPooling is not Pooling" in r for r in reasons)


def test_mixers_register_from_user_code_with_settings_per_stage():
    @register_mixer("test_scaled_identity")
    class ScaledIdentity(nn.Module):
        def __init__(self, dim: int, factor: float = 1.0) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.factor * x

    config = TINY.replace(
        mixers=("test_scaled_identity",) * 4,
        mixer_settings=({"factor": 1.0}, {"factor": 2.0}, {"factor": 3.0}, {"factor": 4.0}),
    )
    model = metaformer.models.metaformer.MetaFormer(config)
    assert [s.blocks[0].token_mixer.factor for s in model.stages] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(metaformer.ConfigError, match="test_scaled_identity.*factr"):
        metaformer.models.metaformer.MetaFormer(
            TINY.replace(mixers=("test_scaled_identity",) * 4, mixer_settings={"factr": 2})
        )
    with pytest.raises(metaformer.ConfigError, match="already registered"):
        register_mixer("pooling")(ScaledIdentity)
    conv = metaformer.models.metaformer.MetaFormer(
        TINY.replace(mixers=("sepconv",) * 4, mixer_settings={"kernel_size": 3})
    )
    assert conv.stages[0].blocks[0].token_mixer.dwconv.kernel_size == (3, 3)  # once unreachable


def test_an_unknown_task_kind_is_an_error():
    with pytest.raises(metaformer.ConfigError, match="unknown task 'panoptic'; the tasks are classification"):
        task("panoptic")
    for kind, entry in TASKS.items():
        for part in ("model", "recipe", "training", "evaluation", "predictor"):
            assert entry.load(part) is not None, (kind, part)
        assert entry.load("model").task in (kind, "detection") or kind == "instance_segmentation"
    from metaformer.cli.evaluate import REPORTS

    assert set(REPORTS) == set(TASKS)  # eval reports every task of the table


def test_the_task_table_decides_which_flags_each_task_takes():
    from metaformer.cli import main

    assert main(["train", "data", "--model", "poolformer_s12", "--iterations", "3"]) == 2
    assert main(["train", "data", "--model", "fpn_poolformer_s12", "--custom-backward"]) == 2
    assert main(["eval", "data", "--model", "retinanet_poolformer_s12", "--tta", "--checkpoint", "x"]) == 2


@pytest.mark.parametrize(
    "command,model,right",
    [
        ("segment", "poolformer_s12", "predict"),
        ("predict", "fpn_poolformer_s12", "segment"),
        ("detect", "fpn_poolformer_s12", "segment"),
        ("predict", "mask_rcnn_poolformer_s12", "detect"),
    ],
)
def test_a_model_of_another_task_is_told_the_one_command_that_fits(command, model, right, capsys, tmp_path):
    from metaformer.cli import main

    assert main([command, str(tmp_path), "--model", model, "--checkpoint", "x"]) == 2
    error = capsys.readouterr().err
    assert f"use `metaformer {right}`" in error
    others = {"predict", "segment", "detect"} - {right}
    assert not any(f"metaformer {other}" in error for other in others)


@pytest.mark.slow
def test_newcomer_walk_through_add_a_mixer_train_fuse_export(tmp_path):
    """The README's walk-through, as a user writes it."""
    from metaformer.fast.export import check_onnx, export_onnx

    @metaformer.register_mixer("test_max_pooling")
    class MaxPooling(nn.Module):
        def __init__(self, dim: int, pool_size: int = 3) -> None:
            super().__init__()
            self.pool = nn.MaxPool2d(pool_size, stride=1, padding=pool_size // 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(x) - x

    config = get_spec("poolformer_s12").config.replace(
        mixers=("test_max_pooling",) * 4, num_classes=3, mixer_settings={"pool_size": 5}, depths=(1, 1, 1, 1)
    )
    metaformer.register_model("test_maxformer", config)
    model = metaformer.create_model("test_maxformer")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        loss = nn.functional.cross_entropy(model.train()(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.stages[0].blocks[0].token_mixer.pool.kernel_size == 5
    fused = metaformer.fuse(model.eval())
    torch.testing.assert_close(fused(images), model(images), atol=1e-4, rtol=1e-4)
    path = tmp_path / "maxformer.onnx"
    export_onnx(model, path, images[:1])
    assert check_onnx(path, model, images[:2]).max_abs_diff < 1e-4


SMALLEST = ["poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18"]


@pytest.mark.parametrize("name", SMALLEST)
def test_forward_intermediates_and_pruning_equal_timms(name):
    """One model per family here, at 96 px; test_baselines and test_parity check every timm architecture."""
    from conftest import assert_intermediates_equal

    timm = pytest.importorskip("timm")
    theirs = randomize(timm.create_model(name, pretrained=False)).eval()
    ours = metaformer.create_model(name).eval()
    metaformer.checkpoints.load_checkpoint(ours, theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 96)
    assert_intermediates_equal(ours, theirs, x)
    assert ours.prune_intermediate_layers(2) == theirs.prune_intermediate_layers(2)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_intermediates(x, intermediates_only=True)[-1],
            theirs.forward_intermediates(x, intermediates_only=True)[-1],
        )


@pytest.mark.parametrize(
    "name",
    [
        "poolformer_s12",
        "caformer_s18",
        "metaformer_random_s12",
        "fpn_poolformer_s12",
        "inception_next_atto",
        "mambaout_femto",
        "upernet_mambaout_femto",
    ],
)
def test_the_stored_counts_are_the_models(name):
    from metaformer.counts import measure, stored_counts

    assert stored_counts(name) == measure(name)  # rewrite counts.json with `python -m metaformer.counts`


def test_the_stored_counts_cover_the_zoo():
    import json

    from metaformer.counts import FILE

    stored = json.loads(FILE.read_text())
    assert set(stored) == {n for n in metaformer.list_models() if not n.startswith("test_")}
    # (the sample above checks entries against fresh counts; `python -m metaformer.counts` rewrites the file)


def test_info_counts_a_registered_model_and_starts_without_torch(capsys):
    import subprocess
    import sys

    from metaformer.cli import main

    assert main(["info", "test_tiny_pool", "--json"]) == 0  # not in counts.json: counted now
    assert '"params": ' in capsys.readouterr().out
    script = (
        "import sys; from metaformer.cli import main; main(['info', 'caformer_s18']); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "False", done.stderr
    assert "MACs        4.107 G at 224x224" in done.stdout
