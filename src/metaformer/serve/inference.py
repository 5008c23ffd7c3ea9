"""What the service runs, without any web framework: decoding uploads, and each task's model on decoded photos,
answering the JSON that ``metaformer predict``, ``segment`` and ``detect`` print."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..data import open_image
from ..errors import ConfigError, ImageLoadError
from ..processor import ImageProcessor
from ..tasks.classification.predict import class_labels
from ..tasks.drawing import png_bytes

# A classifier resizes the short side to ~256 px keeping the aspect: a 1 x 100000 px strip (a few hundred bytes as a
# PNG) would grow to gigabytes. Dense models keep their inputs bounded themselves, but paste their outputs back at
# the photo's size (class probabilities per pixel, instance masks): larger photos are scaled down to this first.
MAX_RESIZED_PIXELS = 50_000_000
MAX_DENSE_SIDE = 2048


def decode(data: bytes, name: str) -> Image.Image:
    """Upload bytes as upright 8-bit RGB, as ``load_image`` reads a file; a specific ``ImageLoadError`` otherwise."""
    if not data:
        raise ImageLoadError(name, "the upload is empty: send the image file's bytes")
    return open_image(io.BytesIO(data), name)


def to_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


class Classifier:
    """Top-k of batches of photos, as ``metaformer predict``; Grad-CAM pictures on the unfused model if given."""

    task = "classification"
    batching = True

    def __init__(self, model: torch.nn.Module, explain_model: torch.nn.Module | None = None) -> None:
        if model.num_classes == 0:
            raise ConfigError("the model has no classifier head (num_classes=0); load a classification checkpoint")
        self.model = model.eval()
        self.explain_model = explain_model.eval() if explain_model is not None else None
        # Grad-CAM hooks the layer it explains: a batch must not run through the same module meanwhile (--no-fuse).
        self._shared = threading.Lock() if explain_model is model else contextlib.nullcontext()
        self.processor = ImageProcessor.for_model(model)
        self.labels = list(class_labels(model))
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @property
    def input_size(self) -> int:
        return self.processor.size

    def prepare(self, image: Image.Image, name: str) -> torch.Tensor:
        """The normalised centre crop ``[3, size, size]`` the model sees."""
        width, height = image.size
        short = int(self.processor.size / self.processor.crop_pct)
        if short * short * max(width, height) / min(width, height) > MAX_RESIZED_PIXELS:
            raise ImageLoadError(name, f"a {width}x{height} image is too elongated to classify (resized to a "
                                 f"{short}-pixel short side, over {MAX_RESIZED_PIXELS:,} pixels)")  # fmt: skip
        return self.processor.transform(image)

    @torch.inference_mode()
    def classify(self, batch: Sequence[tuple[torch.Tensor, int]]) -> list[list[dict]]:
        """The top-k entries of each ``(pixels, k)`` of one forward pass, as ``predict`` rounds them."""
        images = torch.stack([x for x, _ in batch]).to(self.device, self.dtype)
        with self._shared:
            probs = self.model(images.contiguous(memory_format=torch.channels_last)).float().softmax(-1)
        values, indices = probs.topk(min(max(k for _, k in batch), len(self.labels)), dim=-1)
        return [
            [{"index": c, "label": self.labels[c], "prob": round(p, 6)} for p, c in zip(vs[:k], cs[:k], strict=True)]
            for (_, k), vs, cs in zip(batch, values.tolist(), indices.tolist(), strict=True)
        ]

    def cam_png(self, pixels: torch.Tensor, index: int) -> bytes:
        """Grad-CAM of class ``index`` blended over the crop the model saw, as PNG."""
        from ..explain import cam_overlay, grad_cam

        if self.explain_model is None:
            raise RuntimeError("no unfused model was given for Grad-CAM")
        x = pixels[None].to(self.device, next(self.explain_model.parameters()).dtype)
        with self._shared:
            cam = grad_cam(self.explain_model, x, targets=[index])[0]
        return png_bytes(cam_overlay(self.processor.to_uint8(pixels), cam))


def _scaled_down(image: Image.Image) -> tuple[torch.Tensor, float]:
    """The photo as a uint8 tensor, scaled down to ``MAX_DENSE_SIDE`` if larger, and the factor applied."""
    tensor = TF.pil_to_tensor(image)
    factor = min(1.0, MAX_DENSE_SIDE / max(image.size))
    if factor < 1.0:
        size = [max(1, round(side * factor)) for side in tensor.shape[-2:]]
        tensor = TF.resize(tensor, size, antialias=True)
    return tensor, factor


class Segmenter:
    """Class shares and the overlay picture of one photo at a time, as ``metaformer segment``."""

    task = "segmentation"
    batching = False

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.labels = list(model.labels or [f"class_{i}" for i in range(model.num_classes)])

    def run(self, image: Image.Image, want_png: bool) -> dict:
        from ..tasks.segmentation.predict import class_shares, colour_pictures, predict_probs

        tensor, _ = _scaled_down(image)
        prediction = predict_probs(self.model, tensor).argmax(0).cpu()
        result: dict = {"classes": class_shares(prediction, self.labels)}
        if want_png:  # the overlay `segment` writes
            result["png"] = to_base64(png_bytes(colour_pictures(tensor, prediction, self.model.num_classes)[1]))
        return result


class Detector:
    """Boxes (and masks) of one photo at a time with their picture, as ``metaformer detect``."""

    batching = False

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.task = getattr(model, "task", "detection")
        self.labels = list(model.labels or [str(i) for i in range(model.num_classes)])

    def run(self, image: Image.Image, want_png: bool, threshold: float) -> dict:
        from ..tasks.detection.predict import detect, draw

        tensor, factor = _scaled_down(image)
        pixels, found = draw(tensor, detect(self.model, tensor), self.model, threshold)
        if factor < 1.0:  # boxes in the uploaded photo's pixels
            found = [{**d, "box": [round(v / factor, 1) for v in d["box"]]} for d in found]
        result: dict = {"detections": found}
        if want_png:
            result["png"] = to_base64(png_bytes(pixels))
        return result
