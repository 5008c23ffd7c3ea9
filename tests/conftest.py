"""Shared fixtures: the real data folder, and models with weights that make every block matter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tiny  # noqa: F401  (registers the tests' tiny architecture)
import torch

import metaformer
from metaformer.engine.task import usable_cores
from metaformer.models.mixers import mixer_class
from metaformer.models.zoo import get_spec

# One model of each kind of block and width: every ablation and hybrid of the PoolFormer paper, PoolFormer-S12 and
# -M36 (S and M widths), and the smallest model of each Baselines family and of InceptionNeXt. The others differ from
# these only in depths and widths: test_models.py, test_baselines.py and test_inception_next.py count their
# parameters and MACs, test_parity.py, test_baselines.py and test_inception_next.py compare each with timm or
# Hugging Face.
CLASSIFIERS = [
    name
    for name in metaformer.list_models(task="classification")
    if not name.startswith("test_")  # the tests' own registered architectures
    if name not in ("poolformer_s24", "poolformer_s36", "poolformer_m48")
    if not name.startswith(("identityformer", "randformer", "poolformerv2", "convformer", "caformer"))
    or name.endswith(("_s12", "_s18"))
    if not name.startswith("inception_next") or name.endswith("_atto")
    if not name.startswith("mambaout") or name == "mambaout_femto"
]
# Models whose mixers hold a matrix over a fixed token grid: they take only the input size they were built for.
FIXED_GRID = {
    n for n in CLASSIFIERS if any(getattr(mixer_class(m), "fixed_grid", False) for m in get_spec(n).config.mixers)
}


def slow_but(names, default: tuple[str, ...] | set[str]) -> list:
    """``names`` as parameters, those not in ``default`` marked slow: the default tier checks one of each kind
    (a model per block kind and width, one kill moment), the full suite every one."""
    return [n if n in default else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _share_the_cores() -> None:
    """Under pytest-xdist each worker takes its share of the cores, its subprocesses too: torch would otherwise
    start as many threads as cores in every worker, and they would spin against each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, usable_cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Each test starts from the same random state, whatever ran before it in its worker: pytest-xdist deals tests
    to the workers in an order that changes from run to run, and a test's random weights must not."""
    torch.manual_seed(0)


DATA_DIR = Path(os.environ.get("METAFORMER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def imagenet_samples() -> list[Path]:
    folder = DATA_DIR / "imagenet-samples"
    if not folder.is_dir():
        pytest.skip(f"real images not found at {folder} (set METAFORMER_DATA to the shared data folder)")
    return sorted(folder.glob("*.JPEG"))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights: layer scales of order 0.1-1 and random norm affines, or the blocks are invisible
    next to the residual stream (the 1e-5/1e-6 initial layer scales would hide any bug in them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_scale" in name:
                param.copy_(torch.rand(param.shape, generator=generator) * 0.9 + 0.1)
            elif "res_scale" in name or name.endswith("act.scale") or name.endswith("act1.scale"):
                param.copy_(torch.rand(param.shape, generator=generator) * 0.9 + 0.3)  # residual and StarReLU scales
            elif "norm" in name and name.endswith("weight"):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            elif name.endswith("bias") or "pos_embed" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


@pytest.fixture
def random_model():
    def make(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
        return randomize(metaformer.create_model(name, **kwargs), seed).eval()

    return make


INTERMEDIATE_CALLS = ({}, {"indices": 2, "norm": True}, {"indices": [0, 3], "stop_early": True},
                      {"intermediates_only": True})  # fmt: skip


def as_nchw(theirs: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """timm's final feature map as ours is: timm's MambaOut keeps it channels-last ``[B, H, W, C]``."""
    return features.permute(0, 3, 1, 2) if getattr(theirs, "output_fmt", "NCHW") == "NHWC" else features


def assert_intermediates_equal(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor) -> None:
    """``forward_intermediates`` as timm's, for each way of calling it: the final map and each stage's."""
    with torch.no_grad():
        for kwargs in INTERMEDIATE_CALLS:
            mine, reference = ours.forward_intermediates(x, **kwargs), theirs.forward_intermediates(x, **kwargs)
            if kwargs.get("intermediates_only"):  # the maps alone; otherwise (the final features, the maps)
                mine, reference = (None, mine), (None, reference)
            assert len(mine[1]) == len(reference[1]), kwargs
            for a, b in zip(mine[1], reference[1], strict=True):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
            if mine[0] is not None:
                torch.testing.assert_close(mine[0], as_nchw(theirs, reference[0]), atol=1e-4, rtol=1e-4)


def assert_equal_to_timm_both_ways(
    name: str, ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, **overrides: object
) -> None:
    """Ours and timm's model holding the same weights compute the same logits, features and intermediates, and timm's
    state dict read back by ours (built with ``overrides``, as ``ours`` was) computes them too."""
    with torch.no_grad():
        expected = theirs(x)
        assert torch.allclose(ours(x), expected, atol=1e-4, rtol=0)
        back = metaformer.create_model(name, checkpoint=theirs.state_dict(), strict=True, **overrides).eval()
        assert torch.allclose(back(x), expected, atol=1e-4, rtol=0)
        assert torch.allclose(ours.forward_features(x), as_nchw(theirs, theirs.forward_features(x)), atol=1e-4, rtol=0)
    assert_intermediates_equal(ours, theirs, x[:1])


def assert_a_training_step_reaches_every_weight(name: str) -> None:
    """One step of a new family's smallest classifier gives every weight a gradient; fine-tuning keeps its MLP head's
    hidden layer and gives it new class rows."""
    model = metaformer.create_model(name, num_classes=5, drop_path_rate=0.1).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    hidden = model.head.fc1.weight.clone()
    model.reset_classifier(7)
    assert torch.equal(model.head.fc1.weight, hidden) and model.head.fc2.out_features == 7


def assert_semantic_fpn_trains_and_folds(name: str) -> None:
    """A Semantic FPN on a family's trunk: logits at the input's size on odd sizes, a gradient for every trainable
    weight, and the folded blocks inside it equal to the plain ones."""
    model = randomize(metaformer.create_model(name, num_classes=5), seed=4).train()
    logits = model(torch.randn(2, 3, 97, 130))
    assert logits.shape == (2, 5, 97, 130)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(metaformer.fuse(model)(x), model(x), atol=1e-4, rtol=0)


def save_as_hf_dataset(folders: Path, path: Path, classes: list[str]) -> Path:
    """The images of ``folders/train`` and ``folders/val`` as a Hugging Face DatasetDict (train, validation), in the
    folders' order, with ``classes`` as its ClassLabel, saved to disk at ``path``."""
    import datasets

    from metaformer.tasks.classification.data import ImageFolder

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for split, folder in (("train", "train"), ("validation", "val")):
        samples = ImageFolder(folders / folder, transform=lambda image: image).samples
        rows = {"image": [str(image) for image, _ in samples], "label": [label for _, label in samples]}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path
