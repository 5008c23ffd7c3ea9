"""Export for runtimes without this library: ONNX (checked in ONNX Runtime) and ``torch.export`` programs.

The exporters trace the reference model with the table's export rows swapped in: the one-group GroupNorm
(PoolFormer's norm) as plain reductions (``inference.DecomposedGroupNorm1`` says why). PoolFormer's pooling
(``count_include_pad=False``) maps to ONNX's ``AveragePool`` as it is.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, MetaformerError
from ..files import atomic_write
from ..models.dense import SemanticFPN, is_dense
from .apply import is_fused, swap_modules

ONNX_TOLERANCE = 1e-4  # the largest logit difference ONNX Runtime may show against PyTorch
EXPORT_EXTRA = 'pip install "metaformer[export]" (onnx, onnxscript, onnxruntime)'


def export_form(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in evaluation mode with every one-group GroupNorm decomposed; same outputs."""
    if is_fused(model):
        raise ConfigError("export the plain model: a fused one runs oneDNN kernels no exporter knows")
    if is_dense(model) and not isinstance(model, SemanticFPN):
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


def _dynamic_shapes(model: nn.Module, static: bool) -> dict | None:
    if static:
        return None
    batch = torch.export.Dim("batch", min=1, max=1024)
    if fixed_grid(model):
        return {"x": {0: batch}}
    # The stem and three downsamplings halve the side four times after the first /4: sides are multiples of 32.
    height, width = (32 * torch.export.Dim(name, min=1, max=128) for name in ("height", "width"))
    return {"x": {0: batch, 2: height, 3: width}}


def _input_name(model: nn.Module) -> str:
    return "images" if isinstance(model, SemanticFPN) else "x"


def _traced_with(example: torch.Tensor, static: bool) -> torch.Tensor:
    # torch.export specialises a dimension of size 1 to the constant 1: trace a dynamic batch with two images.
    return example if static or example.shape[0] > 1 else example.expand(2, *example.shape[1:])


@dataclass
class OnnxCheck:
    """ONNX Runtime against PyTorch on the same input."""

    max_abs_diff: float
    shape: tuple[int, ...]

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= ONNX_TOLERANCE


def export_onnx(
    model: nn.Module, path: str | os.PathLike, example: torch.Tensor, *, static: bool = False, opset: int | None = None
) -> Path:
    """Write ``model`` as ONNX through ``torch.onnx.export`` (the dynamo exporter), batch and image size dynamic
    unless ``static`` (sides multiples of 32); input ``pixel_values``, output ``logits``."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError:
        raise ConfigError(f"ONNX export needs onnx and onnxscript: {EXPORT_EXTRA}") from None
    model = export_form(model)
    shapes = _dynamic_shapes(model, static)
    if shapes is not None:
        shapes = {_input_name(model): shapes["x"]}
    try:
        with torch.no_grad():  # the literal modules, not the training path's custom autograd function
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
        raise MetaformerError(f"torch.onnx.export failed: {str(error).splitlines()[0]}") from error
    data = program.model_proto.SerializeToString()
    return atomic_write(Path(path), data)


def check_onnx(path: str | os.PathLike, model: nn.Module, pixel_values: torch.Tensor) -> OnnxCheck:
    """Run the ONNX file in ONNX Runtime (CPU) on ``pixel_values`` and compare with ``model`` in PyTorch."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"checking the export needs ONNX Runtime: {EXPORT_EXTRA}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
    model = export_form(model)
    shapes = _dynamic_shapes(model, static)
    if shapes is not None:
        shapes = {_input_name(model): shapes["x"]}
    try:
        with torch.no_grad():
            program = torch.export.export(model, (_traced_with(example, static),), dynamic_shapes=shapes)
    except Exception as error:
        raise MetaformerError(f"torch.export failed: {str(error).splitlines()[0]}") from error
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")  # AOTInductor wants a name ending .pt2
    try:
        if aot:
            torch._inductor.aoti_compile_and_package(program, package_path=str(temporary))
        else:
            torch.export.save(program, temporary)
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
