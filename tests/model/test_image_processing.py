"""From DICOM, PNG and JPEG files to the model's input arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from libra_node.model.image_processing import (
    IMAGE_SIZE,
    ImageError,
    ImageNormalizer,
    pad_to_square,
    prepare_pixels,
)
from libra_node.model.tiny import rad_dino_processor_config
from libra_node.synthetic import SyntheticStudy, make_chest_image


def reference_grey(path: Path) -> np.ndarray:
    """RG1 by hand: window (no rescale in the file), invert MONOCHROME1, stretch, pad, resize."""
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "RescaleSlope" not in ds
    x = ds.pixel_array.astype(np.float64)
    center, width = float(ds.WindowCenter) - 0.5, float(ds.WindowWidth) - 1
    top = 2 ** int(ds.BitsStored) - 1
    x = np.clip((x - center) / width + 0.5, 0, 1) * top
    x = x.max() - x
    x = ((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
    rows, cols = x.shape
    side = max(rows, cols)
    canvas = np.zeros((side, side), np.uint8)
    canvas[
        (side - rows) // 2 : (side - rows) // 2 + rows,
        (side - cols) // 2 : (side - cols) // 2 + cols,
    ] = x
    return np.asarray(
        Image.fromarray(canvas).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    )


def test_real_radiograph_goes_through_luts_inversion_padding_and_resize(
    rg1_path: Path, rg1_pixels: np.ndarray
) -> None:
    assert rg1_pixels.shape == (IMAGE_SIZE, IMAGE_SIZE) and rg1_pixels.dtype == np.uint8
    expected = reference_grey(rg1_path)
    assert np.abs(rg1_pixels.astype(int) - expected.astype(int)).max() <= 1
    # MONOCHROME1: air (outside the body, image corners) must come out dark after inversion.
    assert rg1_pixels[60:80, 60:80].mean() < rg1_pixels[200:300, 230:290].mean()


def test_dataset_and_file_path_give_the_same_pixels(rg1_path: Path, rg1_pixels: np.ndarray) -> None:
    assert np.array_equal(prepare_pixels(pydicom.dcmread(rg1_path)), rg1_pixels)


def test_lossless_jpeg_2000_decodes_to_the_same_image(rg1_pixels: np.ndarray) -> None:
    compressed = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))
    assert compressed.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(prepare_pixels(compressed), rg1_pixels)


def test_lossy_jpeg_2000_decodes_close_to_the_original(rg1_pixels: np.ndarray) -> None:
    lossy = prepare_pixels(get_testdata_file("RG1_J2KI.dcm"))
    assert np.abs(lossy.astype(int) - rg1_pixels.astype(int)).mean() < 3


def test_monochrome1_and_monochrome2_of_the_same_anatomy_look_alike() -> None:
    study = dict(rows=200, columns=160, views=("PA",))
    mono2 = make_chest_image(SyntheticStudy(photometric="MONOCHROME2", **study), "PA")
    mono1 = make_chest_image(SyntheticStudy(photometric="MONOCHROME1", **study), "PA")
    difference = prepare_pixels(mono1).astype(int) - prepare_pixels(mono2).astype(int)
    assert np.abs(difference).max() <= 2


def test_modality_lut_is_applied_before_the_window() -> None:
    # A narrow window clips, so windowing the raw values instead would change the image.
    base = make_chest_image(SyntheticStudy(rows=64, columns=64, views=("PA",)), "PA")
    base.WindowCenter, base.WindowWidth = 2048, 1024
    rescaled = make_chest_image(SyntheticStudy(rows=64, columns=64, views=("PA",)), "PA")
    rescaled.RescaleSlope, rescaled.RescaleIntercept = 2, -1000
    # The same window in output units: centre 2 * 2048 - 1000, width 2 * 1024.
    rescaled.WindowCenter, rescaled.WindowWidth = 3096, 2048
    difference = np.abs(prepare_pixels(base).astype(int) - prepare_pixels(rescaled).astype(int))
    # DICOM's LINEAR window (centre - 0.5, width - 1) is not exactly scale-free: a grey level or so.
    assert difference.mean() < 0.5 and difference.max() <= 4


def test_non_square_images_are_centred_on_black_or_mean_or_a_given_grey() -> None:
    tall = np.full((4, 2), 200, np.uint8)
    assert pad_to_square(tall, 0).tolist() == [[0, 200, 200, 0]] * 4
    wide = np.full((2, 4), 9, np.uint8)
    assert pad_to_square(wide, 7).tolist() == [[7] * 4, [9] * 4, [9] * 4, [7] * 4]

    image = make_chest_image(SyntheticStudy(rows=300, columns=100, views=("PA",)), "PA")
    assert prepare_pixels(image, pad_color="black")[:, :5].max() == 0
    assert set(np.unique(prepare_pixels(image, pad_color="mean")[:, :5])) == {int(0.5307 * 255)}
    assert set(np.unique(prepare_pixels(image, pad_color=42)[:, :5])) == {42}
    with pytest.raises(ValueError, match="pad colour"):
        prepare_pixels(image, pad_color="purple")


def test_png_and_jpeg_files_are_read_as_they_are(tmp_path: Path) -> None:
    grey = (np.arange(120 * 90).reshape(120, 90) % 251).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "cxr.png")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "cxr_rgb.png")
    expected = np.asarray(
        Image.fromarray(pad_to_square(grey, 0)).resize((518, 518), Image.Resampling.BICUBIC)
    )
    assert np.array_equal(prepare_pixels(tmp_path / "cxr.png"), expected)
    assert np.array_equal(prepare_pixels(tmp_path / "cxr_rgb.png"), expected)

    Image.fromarray(grey).save(tmp_path / "cxr.jpg", quality=95)
    assert (
        np.abs(prepare_pixels(tmp_path / "cxr.jpg").astype(int) - expected.astype(int)).mean() < 4
    )


def test_sixteen_bit_png_is_stretched_to_eight_bits(tmp_path: Path) -> None:
    deep = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    pixels = prepare_pixels(tmp_path / "deep.png")
    assert pixels.min() == 0 and pixels.max() >= 254


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.dcm", "does not exist"),
        (
            lambda tmp: _write(tmp / "garbage.dcm", b"not a dicom file at all"),
            "cannot read DICOM file",
        ),
        (lambda tmp: _write(tmp / "notes.txt", b"hello"), "cannot read image file"),
    ],
)
def test_unreadable_sources_raise_a_clear_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        prepare_pixels(make(tmp_path))


def test_dataset_without_pixels_or_contrast_is_refused() -> None:
    image = make_chest_image(SyntheticStudy(rows=32, columns=32, views=("PA",)), "PA")
    flat = make_chest_image(SyntheticStudy(rows=32, columns=32, views=("PA",)), "PA")
    flat.PixelData = np.full((32, 32), 700, np.uint16).tobytes()
    del image.PixelData
    with pytest.raises(ImageError, match="no pixel data"):
        prepare_pixels(image)
    with pytest.raises(ImageError, match="no contrast"):
        prepare_pixels(flat)


def test_undecodable_pixel_data_is_refused() -> None:
    image = make_chest_image(SyntheticStudy(rows=32, columns=32, views=("PA",)), "PA")
    image.PixelData = image.PixelData[:100]  # truncated
    with pytest.raises(ImageError, match="cannot decode the pixel data"):
        prepare_pixels(image)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.fixture()
def normalizer(tmp_path: Path) -> ImageNormalizer:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(rad_dino_processor_config()))
    return ImageNormalizer.from_file(tmp_path / "preprocessor_config.json")


def test_normalizer_scales_and_normalises_with_the_processor_values(
    normalizer: ImageNormalizer,
) -> None:
    first = np.zeros((518, 518), np.uint8)
    second = np.full((518, 518), 255, np.uint8)
    second[0, 0] = 51
    out = normalizer([first, second])
    assert out.shape == (2, 3, 518, 518) and out.dtype == np.float32
    assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 0], out[:, 2])
    np.testing.assert_allclose(out[0, 0, 0, 0], (0 - 0.5307) / 0.2583, rtol=1e-6)
    np.testing.assert_allclose(out[1, 0, 1, 1], (1 - 0.5307) / 0.2583, rtol=1e-6)
    np.testing.assert_allclose(out[1, 2, 0, 0], (0.2 - 0.5307) / 0.2583, rtol=1e-6)


def test_normalizer_refuses_arrays_that_did_not_come_from_prepare_pixels(
    normalizer: ImageNormalizer,
) -> None:
    with pytest.raises(ImageError, match="518x518 uint8"):
        normalizer([np.zeros((512, 512), np.uint8)])
    with pytest.raises(ImageError, match="518x518 uint8"):
        normalizer([np.zeros((518, 518), np.float32)])


def test_processor_configuration_problems_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"image_std": [0.2, 0.2, 0.2]}))
    with pytest.raises(ImageError, match="image_mean"):
        ImageNormalizer.from_file(broken)
    other_size = tmp_path / "other.json"
    other_size.write_text(
        json.dumps({**rad_dino_processor_config(), "crop_size": {"height": 224, "width": 224}})
    )
    with pytest.raises(ImageError, match="224"):
        ImageNormalizer.from_file(other_size)
    with pytest.raises(ImageError, match="cannot read"):
        ImageNormalizer.from_file(tmp_path / "absent.json")
