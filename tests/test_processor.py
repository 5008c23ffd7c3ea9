"""Preprocessing: equal to Hugging Face's PIL processor on real photos; every image mode and orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from metaformer import ImageProcessor, load_image
from metaformer.data import ImageLoadError, to_rgb


def hf_pixels(image: Image.Image, crop_pct: float) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")  # the one test of this module that needs it
    processor = getattr(transformers, "PoolFormerImageProcessorPil", None) or transformers.PoolFormerImageProcessor
    return processor(crop_pct=crop_pct)(image, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("crop_pct", [0.9, 0.95])
def test_equal_to_hugging_face_on_real_photos(crop_pct, imagenet_samples):
    ours = ImageProcessor(crop_pct=crop_pct)
    worst = 0.0
    for path in imagenet_samples:
        image = Image.open(path)
        if image.mode != "RGB":  # HF's processor fails on grayscale JPEGs; compare on the RGB version
            with pytest.raises(ValueError):
                hf_pixels(image, crop_pct)
            image = image.convert("RGB")
        worst = max(worst, (ours(path) - hf_pixels(image, crop_pct)).abs().max().item())
    assert len(imagenet_samples) == 100
    assert worst <= 1e-5


def test_grayscale_jpeg_works(imagenet_samples):
    gray = [p for p in imagenet_samples if Image.open(p).mode == "L"]
    assert gray, "the sample set has a grayscale JPEG"
    pixels = ImageProcessor()(gray[0])
    assert pixels.shape == (1, 3, 224, 224)
    assert torch.equal(pixels[0, 0] * 0.229 + 0.485, pixels[0, 1] * 0.224 + 0.456) or torch.allclose(
        pixels[0, 0] * 0.229 + 0.485, pixels[0, 2] * 0.225 + 0.406, atol=1e-6
    )


def test_batches_of_paths_and_images(imagenet_samples):
    processor = ImageProcessor.for_model("poolformer_m36")
    assert processor.crop_pct == 0.95
    batch = processor([imagenet_samples[0], Image.open(imagenet_samples[1]), str(imagenet_samples[2])])
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[0], processor(imagenet_samples[0])[0])


@pytest.fixture
def photo(imagenet_samples) -> Image.Image:
    return Image.open(imagenet_samples[0]).convert("RGB").resize((300, 200))


def test_transparent_images_are_composited_on_white(photo):
    rgba = photo.convert("RGBA")
    alpha = np.zeros((200, 300), np.uint8)
    alpha[:, 150:] = 255
    rgba.putalpha(Image.fromarray(alpha))
    processor = ImageProcessor()
    white = Image.new("RGB", (300, 200), (255, 255, 255))
    white.paste(photo, mask=rgba.getchannel("A"))
    torch.testing.assert_close(processor(rgba), processor(white))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_opaque_modes_convert_like_pillow(mode, photo, tmp_path):
    image = photo.convert(mode)
    path = tmp_path / ("image.tiff" if mode == "CMYK" else "image.png")
    image.save(path)
    expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(np.asarray(load_image(path)), expected)
    torch.testing.assert_close(ImageProcessor()(image), ImageProcessor()(Image.fromarray(expected)))


def test_transparent_gray_and_palette_pixels_become_white(photo):
    la = photo.convert("LA")
    la.putalpha(0)
    assert np.all(np.asarray(to_rgb(la)) == 255)
    palette = photo.convert("P")
    clear = palette.getpixel((0, 0))
    palette.info["transparency"] = clear
    converted, opaque = np.asarray(to_rgb(palette)), np.asarray(palette.convert("RGB"))
    is_clear = np.asarray(palette) == clear
    assert np.all(converted[is_clear] == 255) and np.array_equal(converted[~is_clear], opaque[~is_clear])


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_images_are_scaled_to_8_bits(mode, photo, tmp_path):
    eight = photo.convert("L")
    sixteen = Image.fromarray(np.asarray(eight, np.uint16) * 257)
    if mode == "I":
        sixteen = sixteen.convert("I")
    expected = ImageProcessor()(eight)
    torch.testing.assert_close(ImageProcessor()(sixteen), expected)
    if mode == "I;16":
        sixteen.save(tmp_path / "sixteen.png")
        torch.testing.assert_close(ImageProcessor()(tmp_path / "sixteen.png"), expected)


def test_float_images_in_unit_range(photo):
    eight = np.asarray(photo.convert("L"))
    as_float = Image.fromarray(eight.astype(np.float32) / 255.0)
    assert np.array_equal(np.asarray(to_rgb(as_float))[..., 0], eight)


def test_exif_orientation_is_applied(photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    path = tmp_path / "sideways.png"
    photo.save(path, exif=exif)
    upright = load_image(path)
    assert upright.size == (200, 300)
    assert np.array_equal(np.asarray(upright), np.asarray(photo.transpose(Image.Transpose.ROTATE_270)))


def test_unreadable_files_are_named(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.jpg: cannot read as an image"):
        ImageProcessor()(path)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(ValueError, match="crop_pct"):
        ImageProcessor(crop_pct=1.5)


def test_exif_rotation_can_be_left_out_as_the_imagenet_protocol_does(photo, tmp_path):
    from metaformer.tasks.classification.data import ImageFolder

    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "cat").mkdir()
    path = tmp_path / "cat" / "sideways.png"
    photo.save(path, exif=exif)
    stored = ImageProcessor(exif_transpose=False)(path)
    assert torch.equal(stored, ImageProcessor()(photo))  # the pixels as stored, as HF's processor reads them
    assert not torch.equal(stored, ImageProcessor()(path))  # predict's default: upright, as a viewer shows it
    # eval reads its dataset the protocol's way
    evaluation = ImageFolder(tmp_path, ImageProcessor(exif_transpose=False).transform, exif_transpose=False)
    assert torch.equal(evaluation[0][0], stored[0])
