"""PoolFormer speed, side by side: ours (plain, fused, compiled) against timm (eager, compiled) and Hugging Face.

    python benchmarks/speed.py                          # CPU: about 20 minutes on 2 cores
    python benchmarks/speed.py --quick                  # fewer rounds, no compiled rows
    python benchmarks/speed.py --device cuda            # CUDA AMP rows (needs a GPU)

The rows of a group run in one process (each group in a fresh one), the same weights and inputs, alternating round
by round; each figure is the median over rounds, and each ratio is against the group's first row (timm eager,
float32 on CPU).
Groups: inference latency at batch 1, throughput at batch 32 (float32 and bfloat16), a training step (forward,
backward, AdamW) at batch 32 (float32, and bfloat16 autocast on CPU), and the whole ``predict`` pipeline (decode,
resize, crop, model) over the real photos in ``../shared/data/imagenet-samples``; the Baselines' ConvFormer-S18
and CAFormer-S18 at batch 32 against timm's (float32 and bfloat16), and InceptionNeXt-T and MambaOut-T (float32),
with the floor row (the model's convolutions and linear layers alone, same run) and each row's fraction of it. On a
CPU without native bf16 (no AVX-512 BF16 or AMX) the bfloat16 groups are skipped: oneDNN would emulate them. Peak
memory: CUDA's allocator peak; for CPU training, the activations kept for the backward (bytes saved by autograd),
which is what grows with the batch. Writes everything to ``--json``. Needs the dev extra (timm, transformers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from transformers import PoolFormerForImageClassification, PoolFormerImageProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's randomize, for the weights

import metaformer
from metaformer import ImageProcessor, load_image
from metaformer.checkpoints import save_checkpoint
from metaformer.fast.int8 import int8_unsupported_reason
from metaformer.fast.onednn import native_bfloat16

DATA = Path(os.environ.get("METAFORMER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
CL = torch.channels_last


@dataclass
class Row:
    name: str
    step: Callable[[], object]
    images: int
    saved_bytes: int | None = None
    times: list[float] = field(default_factory=list)
    reports_time: bool = False  # the step returns its own time in seconds (a profiled part of a program)


def machine() -> str:
    """The CPU's model name and the instruction sets that decide the low-precision rows."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = [f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags]
    return f"{model or 'unknown CPU'} ({', '.join(wanted) or 'no AVX-512'})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_activation_bytes(step: Callable[[], object]) -> int:
    """Bytes of the tensors autograd keeps for the backward during one training step (shared storages once)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter) and tensor.layout == torch.strided:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def run_group(title: str, rows: list[Row], rounds: int, device: torch.device, warmup: int = 2) -> dict:
    print(f"\n== {title}", flush=True)
    for row in rows:
        start = time.perf_counter()
        for _ in range(warmup):
            row.step()
        sync(device)
        print(f"   warm-up {row.name}: {time.perf_counter() - start:.1f} s", flush=True)
    peaks: dict[str, float] = {}
    for _ in range(rounds):
        for row in rows:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            reported = row.step()
            sync(device)
            row.times.append(reported if row.reports_time else time.perf_counter() - start)
            if device.type == "cuda":
                peaks[row.name] = torch.cuda.max_memory_allocated(device) / 2**20
    base = statistics.median(rows[0].times)
    results = []
    print(f"   {'':34s} {'images/s':>9s} {'ms':>9s} {'ratio':>6s} {'memory MiB':>11s}")
    for row in rows:
        median = statistics.median(row.times)
        memory = peaks.get(row.name) if device.type == "cuda" else (row.saved_bytes or 0) / 2**20 or None
        result = {
            "name": row.name,
            "images_per_s": row.images / median,
            "median_ms": median * 1e3,
            "ratio": base / median,
            "memory_mib": memory,
            "times_ms": [t * 1e3 for t in row.times],
        }
        results.append(result)
        shown = f"{memory:11.0f}" if memory else f"{'-':>11s}"
        print(f"   {row.name:34s} {result['images_per_s']:9.1f} {median * 1e3:9.1f} {result['ratio']:6.2f} {shown}")
    return {"group": title, "rows": results}


def build_models(name: str, device: torch.device) -> dict[str, torch.nn.Module]:
    """Ours, timm's and HF's model with the same (non-trivial, random) weights."""
    ours = metaformer.create_model(name).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # layer scales of order 1, or the blocks vanish next to the residual stream
        for key, param in ours.named_parameters():
            if "layer_scale" in key:
                param.copy_(torch.rand(param.shape, generator=generator) * 0.9 + 0.1)
    with tempfile.TemporaryDirectory() as folder:
        timm_file = save_checkpoint(ours, f"{folder}/timm.safetensors", to="timm")
        theirs = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(timm_file)})
        hf_folder = save_checkpoint(ours, f"{folder}/hf", to="hf")
        hf = PoolFormerForImageClassification.from_pretrained(hf_folder)
    models = {"ours": ours, "timm": theirs.eval(), "hf": hf.eval()}
    return {key: model.to(device, memory_format=CL) for key, model in models.items()}


def call(model: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None) -> Callable[[], object]:
    """One timed call: ``model(x)`` without autograd, under autocast to ``autocast`` if given."""

    def step() -> object:
        context = torch.autocast(x.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), context:
            return model(x)

    return step


def inference_rows(models: dict, batch: int, device: torch.device, dtype: torch.dtype, compile_rows: bool) -> list:
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=CL)
    ours, theirs, hf = models["ours"], models["timm"], models["hf"]
    fused = metaformer.fuse(ours)

    low = images.to(dtype)
    if device.type == "cuda":  # AMP on CUDA: the peers under autocast, ours fused in half precision
        rows = [Row("timm eager AMP", call(theirs, images, dtype), batch)]
        if compile_rows:
            rows.append(Row("timm compiled AMP", call(torch.compile(theirs), images, dtype), batch))
        rows += [Row("HF AMP", call(hf, images, dtype), batch), Row("ours plain AMP", call(ours, images, dtype), batch)]
        half = fused.to(dtype)
        rows.append(Row("ours fused", call(half, low), batch))
        if compile_rows:
            rows.append(Row("ours fused compiled", call(torch.compile(half), low), batch))
        return rows
    suffix = "fp32" if dtype == torch.float32 else "bf16"
    rows = [
        Row("timm eager fp32", call(theirs, images), batch),
        Row(f"floor {suffix}", floor_step(ours, images, dtype), batch),
    ]
    if dtype == torch.float32:
        if compile_rows:
            rows.append(Row("timm compiled fp32", call(torch.compile(theirs), images), batch))
        rows += [
            Row("HF fp32", call(hf, images), batch),
            Row("ours plain fp32", call(ours, images), batch),
            Row("ours fused fp32", call(fused, images), batch),
        ]
        if compile_rows:
            rows.append(Row("ours fused compiled fp32", call(torch.compile(fused), images), batch))
        return rows
    rows.append(Row("timm eager bf16 (autocast)", call(theirs, images, dtype), batch))
    if compile_rows:
        rows.append(Row("timm compiled bf16 (autocast)", call(torch.compile(theirs), images, dtype), batch))
    half = metaformer.fuse(ours).to(dtype)
    rows.append(Row("ours fused bf16", call(half, low), batch))
    if compile_rows:
        rows.append(Row("ours fused compiled bf16", call(torch.compile(half), low), batch))
    return rows


def int8_rows(models: dict, batch: int) -> list:
    """int8 (``metaformer.quantize``, calibrated here on the random pixels: the time does not depend on the ranges)
    against timm in float32 and our fused float32, with the int8 floor: the time the int8 program spends in
    oneDNN's int8 convolutions and linear layers, profiled in each round."""
    images = torch.randn(batch, 3, 224, 224).contiguous(memory_format=CL)
    quantized = metaformer.quantize(models["ours"], [images])
    return [
        Row("timm eager fp32", call(models["timm"], images), batch),
        Row("floor int8", int8_floor_step(quantized, images), batch, reports_time=True),
        Row("ours fused fp32", call(metaformer.fuse(models["ours"]), images), batch),
        Row("ours int8", call(quantized, images), batch),
    ]


def int8_floor_step(program: torch.nn.Module, images: torch.Tensor) -> Callable[[], float]:
    def step() -> float:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile, torch.no_grad():
            program(images)
        products = [e for e in profile.key_averages() if e.key.startswith("onednn::q")]
        if not products:
            raise RuntimeError("the int8 program ran no oneDNN int8 kernel (onednn::q*): nothing to call its floor")
        return sum(e.self_cpu_time_total for e in products) / 1e6

    return step


def training_rows(name: str, batch: int, device: torch.device, amp: torch.dtype | None, compile_rows: bool) -> list:
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=CL)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def trainer(model: torch.nn.Module, autocast: torch.dtype | None = amp) -> Callable[[], object]:
        model = model.to(device, memory_format=CL).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> object:
            context = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
            with context:
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        return step

    def ours(custom_backward: bool) -> torch.nn.Module:
        model = metaformer.create_model(name, drop_path_rate=0.1)
        if custom_backward:  # `train --custom-backward`; by default training runs the literal modules
            metaformer.use_custom_backward(model)
        return model

    def theirs() -> torch.nn.Module:
        return timm.create_model(name, drop_path_rate=0.1)

    suffix = f" {str(amp).split('.')[-1]} autocast" if amp else " fp32"
    rows = [Row("timm eager" + suffix, trainer(theirs()), batch)]
    if device.type == "cpu" and amp:  # bf16 on CPU: the baseline stays timm in fp32, as for inference
        rows.insert(0, Row("timm eager fp32", trainer(theirs(), None), batch))
    if compile_rows:
        rows.append(Row("timm compiled" + suffix, trainer(torch.compile(theirs())), batch))
    rows += [
        Row("ours literal modules" + suffix, trainer(ours(False)), batch),
        Row("ours custom backward" + suffix, trainer(ours(True)), batch),
    ]
    if compile_rows:
        rows.append(Row("ours compiled" + suffix, trainer(torch.compile(ours(False))), batch))
    if device.type == "cpu":
        for row in rows:
            row.saved_bytes = saved_activation_bytes(row.step)
    return rows


def pipeline_rows(models: dict, batch: int, device: torch.device) -> tuple[list, dict]:
    """``predict`` as a user runs it: read, decode, resize, crop, normalise, model; ours against HF's."""
    folder = DATA / "imagenet-samples"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    ours_processor = ImageProcessor(crop_pct=0.9)
    hf_processor = PoolFormerImageProcessor(crop_pct=0.9)
    fused = metaformer.fuse(models["ours"])

    def run_ours(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> Callable[[], list]:
        def step() -> list:
            top = []
            for start in range(0, len(paths), batch):
                pixels = ours_processor([load_image(p) for p in paths[start : start + batch]])
                with torch.inference_mode():
                    logits = model(pixels.to(device, dtype).contiguous(memory_format=CL))
                top += logits.argmax(1).tolist()
            return top

        return step

    def run_hf() -> list:
        top = []
        for start in range(0, len(paths), batch):
            images = [load_image(p) for p in paths[start : start + batch]]
            pixels = hf_processor(images, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                top += models["hf"](pixels.to(device).contiguous(memory_format=CL)).logits.argmax(1).tolist()
        return top

    rows = [
        Row("HF processor + model fp32", run_hf, len(paths)),
        Row("ours predict, plain fp32", run_ours(models["ours"]), len(paths)),
        Row("ours predict, fused fp32", run_ours(fused), len(paths)),
    ]
    agreement = {}
    if device.type == "cpu":
        low = metaformer.fuse(models["ours"]).to(torch.bfloat16)
        rows.append(Row("ours predict, fused bf16", run_ours(low, torch.bfloat16), len(paths)))
        reference, half = run_ours(models["ours"])(), rows[-1].step()
        agrees = sum(a == b for a, b in zip(reference, half, strict=True))
        agreement = {"photos": len(paths), "bf16_top1_agrees_with_fp32": agrees}
    return rows, agreement


def baselines_rows(name: str, batch: int, device: torch.device, dtype: torch.dtype) -> list:
    """A model timm also has (ConvFormer, CAFormer, InceptionNeXt, MambaOut) against timm's with the same weights:
    eager timm, ours plain and fused; in bf16, timm under autocast against ours fused in bf16."""
    from conftest import randomize  # the tests' non-trivial weights: residual and StarReLU scales away from 1

    ours = randomize(metaformer.create_model(name)).eval()
    with tempfile.TemporaryDirectory() as folder:
        timm_file = save_checkpoint(ours, f"{folder}/timm.safetensors", to="timm")
        theirs = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(timm_file)}).eval()
    ours, theirs = ours.to(device, memory_format=CL), theirs.to(device, memory_format=CL)
    fused = metaformer.fuse(ours)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=CL)

    suffix = "fp32" if dtype == torch.float32 else "bf16"
    rows = [
        Row(f"{name} timm eager fp32", call(theirs, images), batch),
        Row(f"{name} floor {suffix}", floor_step(ours, images, dtype), batch),
    ]
    if dtype == torch.float32:
        return [
            *rows,
            Row(f"{name} ours plain fp32", call(ours, images), batch),
            Row(f"{name} ours fused fp32", call(fused, images), batch),
        ]
    return [
        *rows,
        Row(f"{name} timm eager bf16 (autocast)", call(theirs, images, dtype), batch),
        Row(f"{name} ours fused bf16", call(fused.to(dtype), images.to(dtype)), batch),
    ]


def floor_step(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype) -> Callable[[], object]:
    """The model's convolutions, linear layers and attention's two batched products (``q k^T``, ``a v``) alone, in
    ``dtype``, each on an input of the shape it gets in a forward pass: what no implementation on these kernels can
    beat."""
    from metaformer.models.mixers import Attention

    model = copy.deepcopy(model).to(dtype)
    calls: list[tuple[Callable, tuple[torch.Tensor, ...]]] = []

    def layer(module: torch.nn.Module, inputs: tuple, _: object) -> None:
        calls.append((module, (inputs[0].clone(),)))

    def attention(module: Attention, inputs: tuple, _: object) -> None:
        batch, _, height, width = inputs[0].shape
        q = torch.randn(batch, module.num_heads, height * width, module.head_dim, dtype=dtype)
        calls.append((torch.matmul, (q, q.transpose(-2, -1).contiguous())))
        calls.append(
            (torch.matmul, (torch.randn(batch, module.num_heads, height * width, height * width, dtype=dtype), q))
        )

    hooks = [
        m.register_forward_hook(layer) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    hooks += [m.register_forward_hook(attention) for m in model.modules() if isinstance(m, Attention)]
    with torch.inference_mode():
        model(images.to(dtype))
    for hook in hooks:
        hook.remove()

    def step() -> None:
        with torch.inference_mode():
            for function, inputs in calls:
                function(*inputs)

    return step


def print_floor_fractions(group: dict, prefix: str = "") -> None:
    """Each row's fraction of the floor row (floor time / row time): 1.0 is the floor itself. Rows of another
    dtype than the floor's get it too (fp32 rows against the int8 floor: how far the precision takes them)."""
    floor = next(r["median_ms"] for r in group["rows"] if "floor" in r["name"].split())
    for row in group["rows"]:
        row["floor_fraction"] = floor / row["median_ms"]
    print(
        "   of the floor: "
        + ", ".join(f"{r['name'].removeprefix(prefix)} {r['floor_fraction']:.2f}" for r in group["rows"])
    )


GROUPS = [
    "b1",
    "b32",
    "bf16",
    "int8",
    "train",
    "train_bf16",
    "pipeline",
    "baselines",
    "baselines_bf16",
    "train_baselines",
    "families",
]
BF16_GROUPS = ("bf16", "train_bf16", "baselines_bf16")


def run_groups_apart(argv: list[str], groups: list[str], output: Path) -> None:
    """Each group in a fresh process: the allocator state one group leaves behind (glibc's adaptive mmap threshold)
    changes how fast the next group's plain models run, by up to 25% here."""
    report: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for group in groups:
            part = Path(folder) / f"{group}.json"
            subprocess.run([sys.executable, __file__, *argv, "--only", group, "--json", str(part)], check=True)
            result = json.loads(part.read_text())
            report = {**result, "groups": report.get("groups", []) + result["groups"]}
    output.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="poolformer_s12")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 rounds, no compiled rows")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="these groups, in this process")
    parser.add_argument("--json", default="speed.json")
    args = parser.parse_args()
    if not args.only:
        argv = [a for a in sys.argv[1:] if not a.startswith("--json") and a != args.json]
        groups = GROUPS
        if args.device == "cpu" and not native_bfloat16():
            print(f"this CPU has no native bf16 instructions: skipping {', '.join(BF16_GROUPS)}")
            groups = [g for g in GROUPS if g not in BF16_GROUPS]
        return run_groups_apart(argv, groups, Path(args.json))
    device = torch.device(args.device)
    rounds, compile_rows = (3, False) if args.quick else (args.rounds, True)
    inductor_config.freezing = True  # inference graphs: constant weights folded and prepacked, for every peer alike
    torch.manual_seed(0)
    wanted = set(args.only)
    models = build_models(args.model, device) if wanted & {"b1", "b32", "bf16", "int8", "pipeline"} else {}
    amp = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    report: dict = {
        "model": args.model,
        "device": str(device),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "groups": [],
    }
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    cpu = device.type == "cpu"
    if "b1" in wanted:
        rows = inference_rows(models, 1, device, torch.float32 if cpu else amp, compile_rows)
        report["groups"].append(run_group("inference, batch 1", rows, rounds * 4, device))
    if "b32" in wanted:
        rows = inference_rows(models, 32, device, torch.float32 if cpu else amp, compile_rows)
        report["groups"].append(run_group("inference, batch 32", rows, rounds, device))
    if "bf16" in wanted and cpu:
        rows = inference_rows(models, 32, device, torch.bfloat16, compile_rows)
        report["groups"].append(run_group("inference, batch 32, bfloat16", rows, rounds, device))
    if "int8" in wanted and cpu and int8_unsupported_reason() is None:
        report["groups"].append(run_group("inference, batch 32, int8", int8_rows(models, 32), rounds, device))
    for group in report["groups"]:
        if cpu and group["group"].startswith("inference"):
            print(f"\n{group['group']}")
            print_floor_fractions(group)
    if "train" in wanted:
        rows = training_rows(args.model, 32, device, None if device.type == "cpu" else amp, compile_rows)
        report["groups"].append(run_group("training step, batch 32", rows, args.train_rounds, device, warmup=1))
    if "train_bf16" in wanted and device.type == "cpu":
        rows = training_rows(args.model, 32, device, torch.bfloat16, compile_rows)
        report["groups"].append(
            run_group("training step, batch 32, bf16 autocast", rows, args.train_rounds, device, warmup=1)
        )
    if "pipeline" in wanted and (DATA / "imagenet-samples").is_dir():
        rows, agreement = pipeline_rows(models, 32, device)
        report["groups"].append(run_group("predict pipeline on the real photos", rows, rounds, device, warmup=1))
        report["bf16_agreement"] = agreement
        if agreement:
            print(f"   bf16 top-1 agrees with fp32 on {agreement['bf16_top1_agrees_with_fp32']}/{agreement['photos']}")
    for group, dtype in (("baselines", torch.float32), ("baselines_bf16", torch.bfloat16)):
        if group in wanted and (device.type == "cpu" or dtype == torch.float32):
            for name in ("convformer_s18", "caformer_s18"):
                rows = baselines_rows(name, 32, device, dtype)
                title = f"{name}, batch 32{', bfloat16' if dtype == torch.bfloat16 else ''}"
                report["groups"].append(run_group(title, rows, rounds, device))
                print_floor_fractions(report["groups"][-1], f"{name} ")
    if "families" in wanted:
        for name in ("inception_next_tiny", "mambaout_tiny"):
            report["groups"].append(
                run_group(f"{name}, batch 32", baselines_rows(name, 32, device, torch.float32), rounds, device)
            )
            if cpu:
                print_floor_fractions(report["groups"][-1], f"{name} ")
    if "train_baselines" in wanted:
        for name in ("convformer_s18", "caformer_s18"):
            rows = training_rows(name, 32, device, None if cpu else amp, False)
            for row in rows:
                row.name = f"{name} {row.name}"
            report["groups"].append(
                run_group(f"{name}, training step, batch 32", rows, args.train_rounds, device, warmup=1)
            )
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
