"""Export for runtimes without this library: ONNX (checked in ONNX Runtime) and ``torch.export`` programs.

The exporters trace the reference model with the table's export rows swapped in: the one-group GroupNorm
(PoolFormer's norm) as plain reductions (``inference.DecomposedGroupNorm1`` says why). PoolFormer's pooling
(``count_include_pad=False``) maps to ONNX's ``AveragePool`` as it is.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, MetaformerError
from ..files import atomic_write
from ..models.dense import is_dense
from ..models.pretrained import PretrainedCfg
from .apply import is_fused, swap_modules

ONNX_TOLERANCE = 1e-4  # the largest logit difference ONNX Runtime may show against PyTorch
MIN_OPSET = 18  # the dynamo exporter's floor: it writes 18 when asked for less
EXPORT_EXTRA = 'pip install "metaformer[export]" (onnx, onnxscript, onnxruntime)'


def export_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in evaluation mode with every one-group GroupNorm decomposed; same outputs."""
    if is_fused(model):
        raise ConfigError("export the plain model: a fused one runs oneDNN kernels no exporter knows")
    if is_dense(model) and model.task != "segmentation":
        # torch.export stops at the box selection, whose output sizes depend on the data; torchvision supports
        # these models only through the TorchScript-based ONNX exporter (the README shows it).
        raise ConfigError(
            f"{model.name}: torch.export cannot trace torchvision's detection post-processing (box "
            "counts depend on the data); export its ONNX with torch.onnx.export(model, ([image],), "
            "path, dynamo=False, opset_version=17) as the README shows"
        )
    model = copy.deepcopy(model).eval()
    swap_modules(model, "export")
    return model


def fixed_grid(model: nn.Module) -> bool:
    """Whether the model takes only its training size: a mixer holds a matrix over a fixed token grid."""
    return any(getattr(type(m), "fixed_grid", False) for m in model.modules())


def sizes_fixed(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether a dynamic export keeps the image size of ``example`` fixed (its batch stays dynamic): a fixed-grid
    model, or sides under 64 pixels, where the last stage is 1x1 and the exporter fixes the sides to them."""
    return fixed_grid(model) or min(example.shape[-2:]) < 64


def _dynamic_shapes(model: nn.Module, static: bool, example: torch.Tensor) -> dict | None:
    if static:
        return None
    batch = torch.export.Dim("batch", min=1, max=1024)
    if sizes_fixed(model, example):
        return {"x": {0: batch}}
    # The stem and three downsamplings halve the side four times after the first /4: sides are multiples of 32,
    # from 64 (a last stage of 1x1 traces as a constant).
    height, width = (32 * torch.export.Dim(name, min=2, max=128) for name in ("height", "width"))
    return {"x": {0: batch, 2: height, 3: width}}


def _input_name(model: nn.Module) -> str:
    return "images" if is_dense(model) and model.task == "segmentation" else "x"


def _traced_with(example: torch.Tensor, static: bool) -> torch.Tensor:
    # torch.export specialises a dimension of size 1 to the constant 1: trace a dynamic batch with two images.
    return example if static or example.shape[0] > 1 else example.expand(2, *example.shape[1:])


def _first_line(error: Exception) -> str:
    """The exporter's message, its first line without the terminal colour codes it carries."""
    return re.sub(r"\x1b\[[0-9;]*m", "", (str(error) or type(error).__name__).splitlines()[0])[:300]


@dataclass
class OnnxCheck:
    """ONNX Runtime against PyTorch on the same input."""

    max_abs_diff: float
    shape: tuple[int, ...]

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= ONNX_TOLERANCE


def onnx_opsets() -> range:
    """The opsets the exporter writes: from its floor to the newest the installed ``onnx`` defines."""
    import onnx

    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def check_example(model: nn.Module, example: torch.Tensor, static: bool) -> None:
    """Refuse, in the model's terms, an example the exporters would stop at with their own messages."""
    side = tuple(example.shape[-2:])
    size = getattr(getattr(model, "config", None), "image_size", None)
    if fixed_grid(model) and side != (size, size):
        raise ConfigError(
            f"this model mixes tokens over a fixed grid made for {size}x{size} pixels: export it at that size "
            f"(--image-size {size}), not {side[0]}x{side[1]}"
        )
    if not static and not fixed_grid(model) and any(s % 32 for s in side):
        raise ConfigError(
            f"a dynamic export takes sides that are multiples of 32 (the example is {side[0]}x{side[1]}): "
            "pass --image-size with such a side, or --static to fix this one"
        )


@contextlib.contextmanager
def _exporter_logs_quiet():
    """The exporters log their own tracebacks and progress at every failed step; our error says what failed."""
    names = ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo", "torch._guards", "torch.fx")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model: nn.Module, path: str | os.PathLike, example: torch.Tensor, *, static: bool = False, opset: int | None = None
) -> Path:
    """Write ``model`` as ONNX through ``torch.onnx.export`` (the dynamo exporter), batch and image size dynamic
    unless ``static`` (sides multiples of 32); input ``pixel_values``, output ``logits``. ``opset`` must be one
    the exporter writes (``onnx_opsets()``); the file is checked to hold it."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError:
        raise ConfigError(f"ONNX export needs onnx and onnxscript: {EXPORT_EXTRA}") from None
    opsets = onnx_opsets()
    if opset is not None and opset not in opsets:
        raise ConfigError(f"--opset {opset}: the exporter writes opsets {opsets.start} to {opsets.stop - 1}")
    check_example(model, example, static)
    model = export_form(model)
    shapes = _dynamic_shapes(model, static, example)
    if shapes is not None:
        shapes = {_input_name(model): shapes["x"]}
    try:
        with torch.no_grad(), _exporter_logs_quiet():  # the literal modules, not the training path's autograd
            program = torch.onnx.export(
                model,
                (_traced_with(example, static),),
                dynamo=True,
                dynamic_shapes=shapes,
                opset_version=opset,
                input_names=["pixel_values"],
                output_names=["logits"],
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; the user needs its message, not a traceback
        raise MetaformerError(f"torch.onnx.export failed: {_first_line(error)}") from error
    written = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:  # the exporter converts down silently where it cannot go up
        raise MetaformerError(
            f"the exporter could not write opset {opset} for this model (it wrote {written}); nothing was written"
        )
    proto = program.model_proto
    record = getattr(model, "pretrained_cfg", None)
    if record is not None:  # what a runtime needs beside the graph: how to preprocess, and what the outputs mean
        for key, value in onnx_metadata(record).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    return atomic_write(Path(path), proto.SerializeToString())


def onnx_metadata(record: PretrainedCfg) -> dict[str, str]:
    """The record's preprocessing and class names, as an ONNX file's ``metadata_props`` (JSON values)."""
    return {
        "model": record.architecture,
        "input_size": json.dumps(list(record.input_size)),
        "crop_pct": json.dumps(record.crop_pct),
        "crop_mode": record.crop_mode,
        "interpolation": record.interpolation,
        "mean": json.dumps(list(record.mean)),
        "std": json.dumps(list(record.std)),
        "labels": json.dumps(list(record.labels)),
    }


def check_onnx(path: str | os.PathLike, model: nn.Module, pixel_values: torch.Tensor) -> OnnxCheck:
    """Run the ONNX file in ONNX Runtime (CPU) on ``pixel_values`` and compare with ``model`` in PyTorch."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"checking the export needs ONNX Runtime: {EXPORT_EXTRA}") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001  onnxruntime's own exception types (InvalidGraph, Fail, ...)
        reason = str(error).splitlines()[0][:300]
        raise MetaformerError(f"ONNX Runtime cannot load {path}: {reason}") from error
    (output,) = session.run(None, {session.get_inputs()[0].name: pixel_values.float().numpy()})
    with torch.no_grad():
        expected = model.eval()(pixel_values.float())
    got = torch.from_numpy(output)
    if got.shape != expected.shape:
        raise MetaformerError(f"{path}: ONNX Runtime gave shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    return OnnxCheck(float((got - expected).abs().max()), tuple(got.shape))


def export_program(
    model: nn.Module, path: str | os.PathLike, example: torch.Tensor, *, static: bool = False, aot: bool = False
) -> Path:
    """Write a ``torch.export`` program (``.pt2``; ``torch.export.load(path).module()`` runs it without this
    library) or, with ``aot``, an AOTInductor package (``torch._inductor.aoti_load_package(path)``: compiled code
    for this machine's CPU or GPU)."""
    check_example(model, example, static)
    model = export_form(model)
    shapes = _dynamic_shapes(model, static, example)
    if shapes is not None:
        shapes = {_input_name(model): shapes["x"]}
    try:
        with torch.no_grad(), _exporter_logs_quiet():
            program = torch.export.export(model, (_traced_with(example, static),), dynamic_shapes=shapes)
    except Exception as error:
        raise MetaformerError(f"torch.export failed: {_first_line(error)}") from error
    path = Path(path)
    if not aot:  # serialised in memory, then written as every file is: a full disk is an error, not an abort
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return atomic_write(path, buffer.getbuffer())
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")  # AOTInductor wants a name ending .pt2
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(temporary))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def check_program(path: str | os.PathLike, model: nn.Module, pixel_values: torch.Tensor, *, aot: bool = False) -> float:
    """The largest output difference between the written program (or AOTInductor package) and ``model``."""
    with torch.no_grad():
        expected = model.eval()(pixel_values)
        program = torch._inductor.aoti_load_package(str(path)) if aot else torch.export.load(path).module()
        return float((program(pixel_values) - expected).abs().max())
