"""Training and evaluation as a user runs them, on small subsets of the real CIFAR-10 images."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR
from PIL import Image
from safetensors.torch import load_file
from tiny import TINY

import metaformer
from metaformer.cli import main
from metaformer.engine.schedules import cosine
from metaformer.errors import ConfigError
from metaformer.tasks.classification.recipe import FINETUNE, PAPER, get_recipe
from metaformer.tasks.common import decay_groups

FAST = ["--image-size", "32", "--num-workers", "0", "--no-progress", "--seed", "3"]


def subset(root: Path, classes: list[str], train: int, val: int, source: str = "cifar10-small") -> Path:
    """A real-image dataset in the ImageNet layout: symlinks to the first files of each class."""
    data = DATA_DIR / source
    if not data.is_dir():
        pytest.skip(f"real images not found at {data}")
    for split, count, origin in (("train", train, "train"), ("val", val, "test")):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for image in sorted((data / origin / name).iterdir())[:count]:
                (folder / image.name).symlink_to(image)
    return root


@pytest.fixture
def tiny(tmp_path) -> Path:
    return subset(tmp_path / "data", ["airplane", "frog", "truck"], train=32, val=12)


def run_train(*args: str) -> int:
    return main(["train", *map(str, args)])


def test_paper_recipe_is_the_official_one():
    assert PAPER.epochs == 300 and PAPER.weight_decay == 0.05 and PAPER.label_smoothing == 0.1
    s12 = PAPER.resolved("poolformer_s12")
    assert (s12.optimizer, s12.warmup_epochs, PAPER.warmup_lr, PAPER.min_lr) == ("adamw", 5, 1e-6, 1e-5)
    assert s12.resolved_lr(1024) == pytest.approx(1e-3) and s12.resolved_lr(4096) == pytest.approx(4e-3)
    # The Baselines' scripts: AdamW 4e-3 at 4096 (LAMB 8e-3 for CAFormer), 20 warm-up epochs for ConvFormer/CAFormer
    caformer, convformer = PAPER.resolved("caformer_s36"), PAPER.resolved("convformer_b36")
    assert (caformer.optimizer, caformer.resolved_lr(4096), caformer.warmup_epochs) == ("lamb", 8e-3, 20)
    assert (caformer.drop_path, caformer.head_dropout, convformer.drop_path) == (0.3, 0.4, 0.6)
    assert (convformer.optimizer, convformer.resolved_lr(4096), convformer.warmup_epochs) == ("adamw", 4e-3, 20)
    assert PAPER.resolved("poolformerv2_m48").warmup_epochs == 5 and PAPER.resolved("randformer_m48").drop_path == 0.3
    ft = get_recipe("finetune_384").resolved("caformer_b36")  # the official 384 fine-tuning from the 224 weights
    assert (ft.optimizer, ft.resolved_lr(1024), ft.drop_path, ft.head_dropout, ft.schedule, ft.ema_decay) == (
        "lamb",
        1e-4,
        0.8,
        0.5,
        "constant",
        0.9999,
    )
    assert (ft.image_size, ft.epochs, ft.mixup, ft.cutmix, ft.warmup_epochs) == (384, 30, 0.0, 0.0, 0)
    assert get_recipe("finetune_384").resolved("convformer_s18").resolved_lr(1024) == 5e-5
    with pytest.raises(
        ConfigError, match="exists for ConvFormer, CAFormer and InceptionNeXt-B only, not poolformer_s12"
    ):
        get_recipe("finetune_384").resolved("poolformer_s12")
    assert (PAPER.mixup, PAPER.cutmix, PAPER.mix_switch_prob, PAPER.random_erasing) == (0.8, 1.0, 0.5, 0.25)
    assert (PAPER.randaugment_magnitude, PAPER.randaugment_std, PAPER.crop_scale) == (9, 0.5, (0.08, 1.0))
    drop = {m: PAPER.resolved(f"poolformer_{m}").drop_path for m in ("s12", "s24", "s36", "m36", "m48")}
    assert drop == {"s12": 0.1, "s24": 0.1, "s36": 0.2, "m36": 0.3, "m48": 0.4}
    assert PAPER.resolved("metaformer_pppa_s12_224").drop_path == 0.1 and PAPER.ema_decay is None
    assert FINETUNE.mixup == 0 and FINETUNE.randaugment_magnitude is None and FINETUNE.epochs < PAPER.epochs
    assert get_recipe("paper", lr=0.5, epochs=None).lr == 0.5
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("imagenet21k")
    with pytest.raises(ConfigError, match="--crop-scale takes 0 < MIN <= MAX <= 1"):
        get_recipe("paper", crop_scale=(0.5, 0.2))


def test_schedule_and_weight_decay_groups():
    def lr_at(epoch: float) -> float:
        return cosine(epoch, 1e-3, epochs=300, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)

    assert lr_at(0) == pytest.approx(1e-6) and lr_at(5) == pytest.approx(1e-3) and lr_at(300) == pytest.approx(1e-5)
    assert lr_at(2.5) == pytest.approx((1e-6 + 1e-3) / 2) and lr_at(152.5) == pytest.approx((1e-3 + 1e-5) / 2)
    model = metaformer.create_model("metaformer_ppaa_s12_224")
    decay, no_decay = decay_groups(model, 0.05, model.no_weight_decay())
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.05
    assert {"stages.2.pos_embed", "stages.0.blocks.0.layer_scale1.scale", "norm.weight", "head.bias"} <= skipped
    assert "stages.0.blocks.0.norm1.weight" in skipped and "head.weight" not in skipped
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])


@pytest.mark.slow
def test_train_learns_then_eval_reproduces_the_logged_accuracy(tmp_path, capsys):
    data = subset(tmp_path / "data", ["airplane", "frog"], train=96, val=40)
    run = tmp_path / "run"
    assert (
        run_train(
            data,
            "--model",
            TINY,
            "--output",
            run,
            "--epochs",
            "6",
            "--batch-size",
            "32",
            "--lr",
            "2e-3",
            "--warmup-epochs",
            "1",
            "--recipe",
            "finetune",
            *FAST,
        )
        == 0
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert max(r["top1"] for r in records) >= 70, [r["top1"] for r in records]  # two classes: chance is 50%
    assert {"config.json", "curves.png", "last.safetensors", "best.safetensors", "last.state.pt"} <= {
        p.name for p in run.iterdir()
    }
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["classes"] == ["airplane", "frog"] and config["recipe"]["epochs"] == 6
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(data),
                "--model",
                TINY,
                "--checkpoint",
                str(run / "last.safetensors"),
                "--json",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 80 and result["errors"] == []
    assert result["top1"] == pytest.approx(records[-1]["top1"])
    assert "top5" not in result and "top1" in records[-1] and "top5" not in records[-1]  # 2 classes: no top-k
    assert set(result["per_class"]) == {"airplane", "frog"}
    loaded = metaformer.create_model(TINY, checkpoint=run / "best.safetensors")
    assert loaded.labels == ("airplane", "frog")


def test_resume_continues_exactly(tiny, tmp_path):
    common = ["--model", TINY, "--batch-size", "16", "--lr", "1e-3", "--warmup-epochs", "1", *FAST]
    assert run_train(tiny, "--output", tmp_path / "straight", "--epochs", "3", *common) == 0
    assert run_train(tiny, "--output", tmp_path / "stopped", "--epochs", "3", "--stop-after", "1", *common) == 0
    assert len((tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()) == 1
    assert run_train("--resume", tmp_path / "stopped") == 0
    straight = load_file(tmp_path / "straight" / "last.safetensors")
    resumed = load_file(tmp_path / "stopped" / "last.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # with RandAugment, mixup and drop path on
    lines = (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_fine_tuning_resets_the_head(tiny, tmp_path, recwarn):
    source = metaformer.create_model("poolformer_s12")
    init = metaformer.save_checkpoint(source, tmp_path / "poolformer_s12.pth.tar", to="official")
    run = tmp_path / "ft"
    assert (
        run_train(
            tiny,
            "--model",
            "poolformer_s12",
            "--init",
            init,
            "--recipe",
            "finetune",
            "--epochs",
            "1",
            "--output",
            run,
            "--batch-size",
            "16",
            *FAST,
        )
        == 0
    )
    assert any(
        "head initialised fresh for 3 classes (the checkpoint's head has 1000)" in str(w.message) for w in recwarn
    )
    tuned = metaformer.create_model("poolformer_s12", checkpoint=run / "last.safetensors")
    assert tuned.num_classes == 3 and tuned.labels == ("airplane", "frog", "truck")


def test_eval_protocol_on_real_imagenet_photos(imagenet_samples, tmp_path, capsys):
    """Synset folders map to the standard 1000-class order: eval's top-1 is predict's argmax == the folder's class."""
    from conftest import randomize

    val = tmp_path / "val"
    for photo in imagenet_samples[:20]:
        (val / photo.name.split("_")[0]).mkdir(parents=True)
        (val / photo.name.split("_")[0] / photo.name).symlink_to(photo)
    model = randomize(metaformer.create_model("poolformer_s12"), seed=2)
    checkpoint = metaformer.save_checkpoint(model, tmp_path / "w.pth.tar", to="official")
    assert (
        main(
            [
                "eval",
                str(tmp_path),
                "--model",
                "poolformer_s12",
                "--checkpoint",
                str(checkpoint),
                "--json",
                "--num-workers",
                "0",
                "--batch-size",
                "7",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    wnids = [w for w, _ in metaformer.data.imagenet_classes()]
    processor = metaformer.ImageProcessor.for_model("poolformer_s12", exif_transpose=False)  # ImageNet protocol
    with torch.no_grad():
        logits = model.eval()(processor(imagenet_samples[:20]))
    targets = torch.tensor([wnids.index(p.name.split("_")[0]) for p in imagenet_samples[:20]])
    assert result["images"] == 20
    assert result["top1"] == pytest.approx(100 * (logits.argmax(-1) == targets).float().mean().item())
    assert result["top5"] == pytest.approx(
        100 * (logits.topk(5).indices == targets[:, None]).any(-1).float().mean().item()
    )


def test_bad_datasets_are_reported(tiny, tmp_path, capsys):
    model = ["--model", TINY, "--epochs", "1", "--batch-size", "16", *FAST]
    assert run_train(tmp_path / "nowhere", "--output", tmp_path / "r0", *model) == 1
    assert "missing" in capsys.readouterr().err
    (tiny / "val" / "horse").mkdir()
    (tiny / "val" / "horse" / "x.jpg").write_bytes(b"junk")
    assert run_train(tiny, "--output", tmp_path / "r1", *model) == 1
    assert "not among the training classes: ['horse']" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "val" / "cat").mkdir(parents=True)
    assert run_train(empty, "--output", tmp_path / "r2", *model) == 1
    assert "hold no image files" in capsys.readouterr().err


def test_unreadable_training_images_are_skipped_and_counted(tiny, tmp_path, recwarn):
    (tiny / "train" / "frog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tiny / "train" / "truck" / "empty.png").write_bytes(b"")
    run = tmp_path / "run"
    assert run_train(tiny, "--model", TINY, "--epochs", "2", "--batch-size", "17", "--output", run, *FAST) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_images"] for r in records] == [2, 2]  # every epoch's count; each file warned about once
    messages = [str(w.message) for w in recwarn if "skipping unreadable" in str(w.message)]
    assert len(messages) == 2 and any("broken.jpg" in m for m in messages)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        run_train(
            tiny,
            "--model",
            TINY,
            "--epochs",
            "3",
            "--stop-after",
            "1",
            "--batch-size",
            "16",
            "--output",
            run,
            *FAST,
        )
        == 0
    )
    good = load_file(run / "last.safetensors")
    config = json.loads((run / "config.json").read_text())
    config["recipe"].update(lr=1e30, warmup_epochs=0)  # the continuation diverges
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert run_train("--resume", run) == 1
    assert "non-finite at epoch 2, step" in capsys.readouterr().err
    assert torch.load(run / "last.state.pt", weights_only=True)["round"] == 1
    kept = load_file(run / "last.safetensors")
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_existing_run_folder_is_not_overwritten(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    common = [tiny, "--model", TINY, "--epochs", "1", "--batch-size", "16", "--output", run, *FAST]
    assert run_train(*common) == 0
    before = (run / "last.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert run_train(*common) == 1
    error = capsys.readouterr().err
    assert "already holds a run" in error and f"--resume {run}" in error and "--force" in error
    assert (run / "last.safetensors").stat().st_mtime_ns == before
    assert run_train(*common, "--force") == 0  # starts afresh
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_bf16_autocast_ema_eval_every_and_a_progress_bar_for_validation(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    fast = [a for a in FAST if a != "--no-progress"]
    assert (
        run_train(
            tiny,
            "--model",
            TINY,
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--output",
            run,
            "--amp",
            "bf16",
            "--ema",
            "--eval-every",
            "2",
            *fast,
        )
        == 0
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)
    assert [r["epoch"] for r in records] == [1, 2, 3]  # a checkpoint and a line every epoch
    assert ["top1" in r for r in records] == [False, True, True]  # evaluated every 2 epochs, and at the end
    assert "top2" in records[-1] and "top5" not in records[-1]  # 3 classes: top-2, never a top-5 of 3
    assert "ema_top1" in records[-1] and (run / "last_ema.safetensors").exists()
    assert "evaluating" in capsys.readouterr().err  # the validation's progress bar
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["ema"] is not None and state["round"] == 3
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["amp"] == "bf16" and config["recipe"]["ema_decay"] == 0.9998


def test_eval_reports_per_class_accuracy_and_writes_the_confusion_matrix(tiny, tmp_path, capsys):
    from conftest import randomize

    model = randomize(metaformer.create_model("poolformer_s12", num_classes=3, image_size=32), seed=5)
    model.reset_classifier(3, labels=["airplane", "frog", "truck"])
    weights = metaformer.save_checkpoint(model, tmp_path / "three.safetensors")
    out = tmp_path / "report"
    evaluate = [
        "eval",
        str(tiny),
        "--model",
        "poolformer_s12",
        "--checkpoint",
        str(weights),
        "--num-workers",
        "0",
        "--output",
        str(out),
    ]
    capsys.readouterr()
    assert main([*evaluate, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "top-2" in text and all(name in text for name in ("airplane", "frog", "truck"))
    report = json.loads((out / "eval.json").read_text())
    matrix = torch.tensor(report["confusion"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 36  # no "other" column: the model has just these 3 classes
    per_class = report["per_class"]
    assert per_class["frog"] == pytest.approx(100 * matrix[1, 1].item() / matrix[1].sum().item())
    assert report["top1"] == pytest.approx(100 * matrix.diagonal().sum().item() / 36)
    with Image.open(out / "confusion.png") as picture:
        assert picture.size[0] > 200
    assert main(evaluate) == 1  # the report is there: not overwritten without --force
    assert "eval.json" in capsys.readouterr().err
    assert main([*evaluate, "--force"]) == 0


def test_crop_scale_reaches_the_random_resized_crop():
    from torchvision.transforms import v2

    from metaformer.tasks.classification.data import train_transform

    recipe = get_recipe("paper", crop_scale=[0.35, 1.0])
    crops = [t for t in train_transform(recipe).transforms[0].transforms if isinstance(t, v2.RandomResizedCrop)]
    assert recipe.crop_scale == (0.35, 1.0) and crops and all(c.scale == (0.35, 1.0) for c in crops)


@pytest.mark.slow
def test_caformer_trains_with_its_official_lamb_and_head_dropout(tiny, tmp_path):
    pytest.importorskip("timm")
    run = tmp_path / "run"
    assert (
        run_train(tiny, "--model", "caformer_s36", "--output", run, "--epochs", "1", "--batch-size", "32", *FAST) == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert (config["recipe"]["optimizer"], config["recipe"]["head_dropout"], config["recipe"]["warmup_epochs"]) == (
        "lamb",
        0.4,
        20,
    )
    assert config["resolved"]["lr"] == pytest.approx(2e-3 * 32 / 1024)
    state = torch.load(run / "last.state.pt", weights_only=True)["optimizer"]
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(state["state"].values())))  # LAMB's moments, stepped
    assert state["param_groups"][0]["max_grad_norm"] == 1.0  # timm's Lamb, as the official scripts ran it
    assert (
        run_train(
            tiny,
            "--model",
            "poolformer_s12",
            "--head-dropout",
            "0.2",
            "--output",
            tmp_path / "no",
            "--batch-size",
            "16",
            *FAST,
        )
        == 2
    )
    assert not (tmp_path / "no").exists()


def test_lamb_without_timm_is_said_before_any_data_is_read(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm.optim", None)  # as on an install without timm: the import fails
    run = tmp_path / "run"
    assert run_train(tiny, "--model", "caformer_s18", "--output", run, "--batch-size", "16", *FAST) == 2
    assert 'pip install "metaformer[train]"' in capsys.readouterr().err and not run.exists()
    assert get_recipe("paper", optimizer="adamw").resolved("caformer_s18").optimizer == "adamw"  # --optimizer


def test_layer_decay_scales_each_layers_rate_and_is_recorded(tiny, tmp_path):
    from metaformer.tasks.common import layer_decay_groups, layer_of

    model = metaformer.create_model("poolformer_s12", num_classes=3)
    depths = model.config.depths  # 2, 2, 6, 2: 12 blocks, so the head is layer 13
    assert [layer_of(n, depths) for n in ("stem.proj.weight", "stages.1.downsample.proj.weight", "head.weight")] == [
        0,
        3,
        13,
    ]
    assert layer_of("stages.2.blocks.5.mlp.fc1.weight", depths) == 2 + 2 + 5 + 1
    groups = layer_decay_groups(model, 0.05, model.no_weight_decay(), 0.5)
    scales = {g["layer"]: g["lr_scale"] for g in groups}
    assert scales[13] == 1.0 and scales[12] == 0.5 and scales[0] == 0.5**13
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # each parameter once
    run = tmp_path / "run"
    flags = ["--model", TINY, "--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--layer-decay", "0.5", *FAST]
    assert run_train(tiny, "--output", run, "--warmup-epochs", "0", *flags) == 0
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["layer_lr_scales"] == [0.5**5, 0.5**4, 0.5**3, 0.5**2, 0.5, 1.0]  # stem, 4 blocks, head
    state = torch.load(run / "last.state.pt", weights_only=True)["optimizer"]["param_groups"]
    lrs = {group["layer"]: group["lr"] for group in state}
    assert lrs[0] / lrs[5] == pytest.approx(0.5**5) and lrs[3] / lrs[5] == pytest.approx(0.25)  # the last step's
    with pytest.raises(ConfigError, match="--layer-decay"):
        get_recipe("paper", layer_decay=1.5)


def test_gradient_checkpointing_recomputes_the_blocks_and_changes_nothing_else(tiny, tmp_path):
    def counted(model: torch.nn.Module) -> list[int]:
        calls = []
        for stage in model.stages:
            for block in stage.blocks:  # the mixer's hook: the recomputation stops once it has what it needs
                block.token_mixer.register_forward_hook(lambda *args: calls.append(1))
        return calls

    torch.manual_seed(0)
    plain = metaformer.create_model(TINY, num_classes=3, drop_path_rate=0.1).train()
    saving = metaformer.create_model(TINY, num_classes=3, drop_path_rate=0.1).train()
    saving.load_state_dict(plain.state_dict())
    saving.set_grad_checkpointing(True)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    gradients = []
    for model in (plain, saving):
        calls = counted(model)
        torch.manual_seed(1)  # the same drop-path draws: checkpointing replays the random state
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        gradients.append([p.grad for p in model.parameters()])
        assert len(calls) == (8 if model is saving else 4)  # every block ran again in the backward
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*gradients, strict=True))
    run = tmp_path / "run"
    flags = ["--model", TINY, "--epochs", "1", "--batch-size", "16", "--grad-checkpointing", *FAST]
    assert run_train(tiny, "--output", run, *flags) == 0
    assert json.loads((run / "config.json").read_text())["settings"]["grad_checkpointing"] is True


def test_fp16_autocast_with_activations_whose_squares_overflow_stays_finite(tiny, tmp_path):
    """poolformer #22's NaNs under native fp16: here the stem makes activations of order 1e3-1e4, whose squares
    (1e6-1e8) overflow fp16's 65504; the norms' statistics accumulate in float32, and the loss is taken in float32,
    so the forward, the loss and the unscaled gradients stay finite, and the run logs how many steps the gradient
    scaler skipped."""
    model = metaformer.create_model(TINY, num_classes=3).train()
    with torch.no_grad():
        model.stem.proj.weight.mul_(1000)
    x = torch.randn(8, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.float16):
        stem = model.stem(x)
        assert stem.dtype == torch.float16 and stem.abs().max() > 300 and stem.float().square().max() > 65504
        logits = model(x)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(loss).backward()
    optimizer = torch.optim.AdamW(model.parameters())
    scaler.unscale_(optimizer)
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    # A head 3000 times too large: the scaled gradients overflow fp16 until the scaler has halved its scale enough.
    with torch.no_grad():
        model.stem.proj.weight.div_(1000)
        model.head.weight.mul_(3000)
    start = metaformer.save_checkpoint(model, tmp_path / "large_head.safetensors")
    run = tmp_path / "run"
    flags = ["--model", TINY, "--init", start, "--epochs", "1", "--batch-size", "16", "--amp", "fp16", *FAST]
    assert run_train(tiny, "--output", run, *flags) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    scale = torch.load(run / "last.state.pt", weights_only=True)["scaler"]["scale"]
    assert record["amp_skipped_steps"] == math.log2(2.0**16 / scale) > 0  # each skip halved the scale
    assert math.isfinite(record["train_loss"])
