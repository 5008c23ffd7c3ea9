"""Classifying photos: ``Classifier``, the one predictor that ``metaformer predict`` and the service run."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ...data import load_image
from ...errors import ConfigError, ImageLoadError
from ...processor import ImageInput, ImageProcessor

# The resize keeps the aspect: a 1 x 100000 px strip (a few hundred bytes as a PNG) would grow to gigabytes.
MAX_RESIZED_PIXELS = 50_000_000


@dataclass
class Prediction:
    path: str
    topk: list[dict] = field(default_factory=list)  # [{"index", "label", "prob"}], most probable first
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "topk": self.topk}


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the pixels a model takes: its weights' (an int8 program says float32 itself)."""
    return getattr(model, "input_dtype", None) or next(iter(model.parameters()), torch.empty(0)).dtype


class Classifier:
    """A classifier ready to run (``fast.prepare``) on photos: its evaluation preprocessing, batched forward passes
    and the top-k entries ``predict --json`` prints; Grad-CAM pictures from ``explain_model``, the unfused model,
    when given."""

    task = "classification"
    batching = True  # requests of the service share forward passes
    queries = ("topk", "cam")  # what a request of the service may ask

    def __init__(
        self, model: torch.nn.Module, *, explain_model: torch.nn.Module | None = None, exif_transpose: bool = True
    ) -> None:
        if model.num_classes == 0:
            raise ConfigError("the model has no classifier head (num_classes=0); load a classification checkpoint")
        self.model = model.eval()
        self.explain_model = explain_model.eval() if explain_model is not None else None
        # Grad-CAM hooks the layer it explains: a batch must not run through the same module meanwhile (--no-fuse).
        self._shared = threading.Lock() if explain_model is model else contextlib.nullcontext()
        self.processor = ImageProcessor.from_record(model.pretrained_cfg, exif_transpose=exif_transpose)
        self.labels = list(model.labels)
        self.device = next(iter(model.parameters()), torch.empty(0)).device
        self.dtype = input_dtype(model)

    @property
    def input_size(self) -> int:
        return self.processor.size

    def prepare(self, image: ImageInput, name: str | os.PathLike = "image") -> torch.Tensor:
        """The normalised centre crop ``[3, size, size]`` the model sees, of a photo (PIL image or file)."""
        return _prepare(self.processor, image, name)

    @torch.inference_mode()
    def classify(self, batch: Sequence[tuple[torch.Tensor, int]]) -> list[list[dict]]:
        """The top-k entries of each ``(pixels, k)`` of one forward pass, most probable first."""
        images = torch.stack([x for x, _ in batch]).to(self.device, self.dtype)
        with self._shared:
            probs = self.model(images.contiguous(memory_format=torch.channels_last)).float().softmax(-1)
        values, indices = probs.topk(min(max(k for _, k in batch), len(self.labels)), dim=-1)
        return [
            [{"index": c, "label": self.labels[c], "prob": round(p, 6)} for p, c in zip(vs[:k], cs[:k], strict=True)]
            for (_, k), vs, cs in zip(batch, values.tolist(), indices.tolist(), strict=True)
        ]

    def predict_files(
        self, files: Sequence[Path], topk: int = 5, batch_size: int = 32, num_workers: int = 0, progress: bool = False
    ) -> Iterator[Prediction]:
        """Top-k predictions for each file, in order; the files are decoded and preprocessed in ``num_workers``
        processes. An unreadable file yields a ``Prediction`` with ``error`` set."""
        loader = DataLoader(
            _Files(files, self),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=list,
            pin_memory=torch.device(self.device).type == "cuda",
        )
        with tqdm(total=len(files), unit="img", disable=not progress, leave=False) as bar:
            for batch in loader:
                good = [(i, x) for i, x, _ in batch if x is not None]
                tops = iter(self.classify([(x, topk) for _, x in good]) if good else [])
                for i, x, error in batch:
                    yield Prediction(str(files[i]), error=error) if x is None else Prediction(str(files[i]), next(tops))
                bar.update(len(batch))

    @torch.inference_mode()
    def embed_files(
        self, files: Sequence[Path], stage: int | None = None, batch_size: int = 32, num_workers: int = 0
    ) -> Iterator[tuple[list[str], torch.Tensor, list[tuple[str, str]]]]:
        """Features of each readable file, a batch at a time: ``(paths, [N, C] float32, [(path, error)])``. The
        pooled features the head takes (``forward_head(pre_logits=True)``), or with ``stage`` that stage's map
        averaged over its positions (``forward_intermediates``)."""
        loader = DataLoader(_Files(files, self), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
        for batch in loader:
            good = [(i, x) for i, x, _ in batch if x is not None]
            errors = [(str(files[i]), error) for i, x, error in batch if x is None]
            if not good:
                yield [], torch.empty(0), errors
                continue
            images = torch.stack([x for _, x in good]).to(self.device, self.dtype)
            images = images.contiguous(memory_format=torch.channels_last)
            if stage is None:
                features = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
            else:
                maps = self.model.forward_intermediates(images, [stage], stop_early=True, intermediates_only=True)
                features = maps[0].mean((-2, -1))
            yield [str(files[i]) for i, _ in good], features.float().cpu(), errors

    def cam_png(self, photo: Image.Image, pixels: torch.Tensor, index: int) -> bytes:
        """Grad-CAM of class ``index`` over the photo (``pixels``: its crop that the model saw), as PNG."""
        from ...explain import cam_on_photo, grad_cam
        from ..drawing import png_bytes

        if self.explain_model is None:
            raise ConfigError("no unfused model was given for Grad-CAM")
        x = pixels[None].to(self.device, next(self.explain_model.parameters()).dtype)
        with self._shared:
            cam = grad_cam(self.explain_model, x, targets=[index])[0]
        return png_bytes(cam_on_photo(photo, cam, self.processor.crop_box(*photo.size)))


def _prepare(processor: ImageProcessor, image: ImageInput, name: str | os.PathLike) -> torch.Tensor:
    if hasattr(image, "read_image"):  # a sample of shards or of a dataset (data/samples.py)
        name, image = str(image), image.read_image(exif_transpose=processor.exif_transpose)
    elif not isinstance(image, Image.Image):
        name, image = image, load_image(image, exif_transpose=processor.exif_transpose)
    width, height = image.size
    short = processor.resized_side
    if short * short * max(width, height) / min(width, height) > MAX_RESIZED_PIXELS:
        raise ImageLoadError(
            name,
            f"a {width}x{height} image is too elongated to classify (resized to a "
            f"{short}-pixel short side, over {MAX_RESIZED_PIXELS:,} pixels)",
        )
    return processor.transform(image)


class _Files(Dataset):
    """The files to classify, decoded and preprocessed in the loader's worker processes (which get the processor,
    not the model)."""

    def __init__(self, paths: Sequence[Path], classifier: Classifier) -> None:
        self.paths = paths
        self.processor = classifier.processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, _prepare(self.processor, self.paths[index], self.paths[index]), None
        except ImageLoadError as error:
            return index, None, error.reason
