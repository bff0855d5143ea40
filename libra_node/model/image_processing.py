"""From a radiograph to the tensor RAD-DINO reads, in two steps.

1. ``prepare_pixels`` (io side, needs the DICOM file): grey 8-bit image,
   padded to a square and resized to 518 x 518 with bicubic interpolation.
   The result is a compact ``uint8`` array that can travel between workers.
2. ``ImageNormalizer`` (gpu side): grey to 3 channels, scaled to [0, 1] and
   normalised with the mean and std of the checkpoint's preprocessor_config.json.

This reproduces the reference pipeline (expand to square, then RAD-DINO's
processor: resize the shortest edge to 518 bicubic, centre crop 518, rescale,
normalise). Resizing a grey image equals resizing its 3 identical channels,
so the grey array carries all the information.

No torch here: the io worker imports this module without loading torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

IMAGE_SIZE = 518
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# RAD-DINO's image mean, for the "mean" pad colour where no processor
# configuration is at hand (the io worker never loads the model).
RAD_DINO_IMAGE_MEAN = 0.5307

PadColor = Literal["black", "mean"] | int


class ImageError(ValueError):
    """An image cannot be turned into model input; the message says why."""


def prepare_pixels(
    source: Dataset | str | Path,
    pad_color: PadColor = "black",
    image_mean: float = RAD_DINO_IMAGE_MEAN,
) -> np.ndarray:
    """A radiograph as the model's grey 518 x 518 ``uint8`` input.

    ``source`` is a pydicom Dataset, a DICOM file, or a PNG/JPEG file.
    ``pad_color`` fills the borders that make the image square: "black"
    (what Libra was trained with), "mean" (the processor's mean grey, what
    the reference inference now uses) or a grey level 0-255.
    """
    grey = load_grey(source)
    square = pad_to_square(grey, pad_fill(pad_color, image_mean))
    resized = Image.fromarray(square).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def pad_fill(pad_color: PadColor, image_mean: float = RAD_DINO_IMAGE_MEAN) -> int:
    """The grey level used for padding."""
    if pad_color == "black":
        return 0
    if pad_color == "mean":
        # int() truncates, as the reference does when it builds its colour.
        return int(image_mean * 255)
    if isinstance(pad_color, int) and not isinstance(pad_color, bool) and 0 <= pad_color <= 255:
        return pad_color
    raise ValueError(f"pad colour must be 'black', 'mean' or a grey level 0-255, not {pad_color!r}")


def read_image_source(path: str | Path) -> Dataset | Path:
    """A DICOM file as its dataset (headers are needed too), any other image file as its path."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist")
    if not _is_dicom_file(path):
        return path
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # truncated or malformed files fail in many ways
        raise ImageError(f"cannot read DICOM file {path}: {exc}") from exc


def load_grey(source: Dataset | str | Path) -> np.ndarray:
    """The image as a 2-D ``uint8`` array, whatever the source."""
    if not isinstance(source, Dataset):
        source = read_image_source(source)
    if isinstance(source, Dataset):
        return dicom_to_grey(source)
    return image_file_to_grey(source)


def _is_dicom_file(path: Path) -> bool:
    """Part 10 files carry "DICM" after a 128-byte preamble."""
    with path.open("rb") as handle:
        header = handle.read(132)
    return header[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def dicom_to_grey(dataset: Dataset, name: str = "the DICOM image") -> np.ndarray:
    """Modality LUT, VOI LUT, MONOCHROME1 inversion, min-max to 8 bit.

    Messages name no file: paths in the spool carry UIDs, which stay out of logs.
    """
    if "PixelData" not in dataset:
        raise ImageError(f"{name} has no pixel data (not an image)")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # decoders raise many types; all mean the same here
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        how = f" ({syntax.name})" if syntax is not None else ""
        raise ImageError(f"cannot decode the pixel data of {name}{how}: {exc}") from exc

    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        # Colour radiographs (rare: secondary captures): luminance, no LUTs.
        values = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    else:
        try:
            values = apply_modality_lut(pixels, dataset)
            values = apply_voi_lut(values, dataset)
        except (ValueError, KeyError, IndexError) as exc:
            raise ImageError(f"cannot apply the LUTs of {name}: {exc}") from exc
        values = np.asarray(values, dtype=np.float64)
        if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
            values = values.max() - values
    return min_max_to_uint8(values, name)


def min_max_to_uint8(values: np.ndarray, name: str = "the image") -> np.ndarray:
    """Stretch to 0..255; truncating to integers as the reference does."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ImageError(f"{name} has non-finite pixel values")
    if high <= low:
        raise ImageError(f"{name} has no contrast (every pixel is {low:g})")
    return ((values - low) / (high - low) * 255).astype(np.uint8)


def image_file_to_grey(path: Path) -> np.ndarray:
    """PNG/JPEG: 8-bit images as they are (as the reference reads them), deeper ones stretched."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                return min_max_to_uint8(np.asarray(image), str(path))
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read image file {path}: {exc}") from exc


def pad_to_square(grey: np.ndarray, fill: int) -> np.ndarray:
    """Centre the image on a square canvas (the reference's expand-to-square)."""
    height, width = grey.shape
    side = max(height, width)
    if height == width:
        return grey
    canvas = np.full((side, side), fill, dtype=np.uint8)
    top = (side - height) // 2
    left = (side - width) // 2
    canvas[top : top + height, left : left + width] = grey
    return canvas


@dataclass(frozen=True)
class ImageNormalizer:
    """Second step: grey 518 x 518 ``uint8`` arrays to normalised float32 [N, 3, 518, 518]."""

    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float = 1 / 255

    @classmethod
    def from_file(cls, path: str | Path) -> ImageNormalizer:
        """Read an image processor's preprocessor_config.json."""
        path = Path(path)
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ImageError(f"cannot read image processor configuration {path}: {exc}") from exc
        try:
            mean = tuple(float(v) for v in config["image_mean"])
            std = tuple(float(v) for v in config["image_std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"{path} lacks a valid image_mean / image_std") from exc
        if len(mean) != 3 or len(std) != 3:
            raise ImageError(f"{path}: image_mean and image_std need 3 values each")
        _check_processor_size(config, path)
        return cls(mean, std, float(config.get("rescale_factor", 1 / 255)))

    @property
    def pad_mean(self) -> float:
        return self.image_mean[0]

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        arrays = [_check_prepared(image) for image in images]
        grey = np.stack(arrays)[:, None]  # [N, 1, H, W]
        # As transformers' processor: rescale in float64, then float32 arithmetic.
        scaled = (grey.astype(np.float64) * self.rescale_factor).astype(np.float32)
        rgb = np.repeat(scaled, 3, axis=1)
        mean = np.asarray(self.image_mean, dtype=np.float32)[None, :, None, None]
        std = np.asarray(self.image_std, dtype=np.float32)[None, :, None, None]
        return np.ascontiguousarray((rgb - mean) / std)


def _check_processor_size(config: dict, path: Path) -> None:
    """The two-step split assumes the processor works at 518 x 518."""
    sizes = []
    for key in ("size", "crop_size"):
        value = config.get(key)
        if isinstance(value, dict):
            sizes.extend(v for v in value.values() if isinstance(v, int))
        elif isinstance(value, int):
            sizes.append(value)
    if any(size != IMAGE_SIZE for size in sizes):
        raise ImageError(f"{path}: the image processor works at {sizes}, this node at {IMAGE_SIZE}")


def _check_prepared(image: np.ndarray) -> np.ndarray:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.shape != (IMAGE_SIZE, IMAGE_SIZE)
    ):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ImageError(
            f"expected a {IMAGE_SIZE}x{IMAGE_SIZE} uint8 array from prepare_pixels, got {shape} {dtype}"
        )
    return image


__all__ = [
    "IMAGE_SIZE",
    "ImageError",
    "ImageNormalizer",
    "PREPROCESSOR_CONFIG",
    "RAD_DINO_IMAGE_MEAN",
    "load_grey",
    "pad_fill",
    "pad_to_square",
    "prepare_pixels",
    "read_image_source",
]
