"""Images decoded as the user sees them: EXIF orientation, 16-bit samples, float / bool / wide-integer arrays, NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from regionclip import RangedImage
from regionclip.data.images import load_image_file, prepare_image
from regionclip.viz.draw import _as_pil

ORIENTATION = 0x0112


@pytest.fixture()
def picture() -> np.ndarray:
    """A 40x60 RGB picture whose top-left corner is red, so every rotation is visible."""
    array = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    array[:10, :20] = [255, 0, 0]
    return array


def _pixels(image, min_size=None) -> torch.Tensor:
    return prepare_image(image, min_size, 1333).pixels


def test_exif_orientation_is_applied_to_files(tmp_path, tiny_model, picture):
    image = Image.fromarray(picture)
    exif = image.getexif()
    exif[ORIENTATION] = 6  # stored sideways: viewers rotate it 90° clockwise
    path = tmp_path / "sideways.png"
    image.save(path, exif=exif)
    displayed = np.ascontiguousarray(np.rot90(picture, k=-1))  # 60 rows x 40 columns, red corner top-right

    assert np.array_equal(np.asarray(load_image_file(path)), displayed)
    prepared = prepare_image(path, None, 1333)
    assert prepared.original_size == (60, 40)
    assert torch.equal(prepared.pixels, _pixels(displayed))
    # boxes refer to the displayed image: the red corner of the displayed picture is a red region
    box = [[30, 0, 40, 20]]
    from_file = tiny_model.embed_regions(str(path), box)[0]
    assert torch.equal(from_file, tiny_model.embed_regions(Image.fromarray(displayed), box)[0])
    assert tiny_model.classify_regions(str(path), box, ["a", "b"], class_embeddings=torch.randn(2, tiny_model.config.embed_dim))[0].image_size == (60, 40)
    assert np.array_equal(np.asarray(_as_pil(str(path))), displayed)  # drawings show the same orientation


def test_16_bit_images_are_scaled_not_saturated(tmp_path, picture):
    gray = picture[:, :, 1]
    path8, path16 = tmp_path / "gray8.png", tmp_path / "gray16.png"
    Image.fromarray(gray).save(path8)
    Image.fromarray(gray.astype(np.uint16) * 257).save(path16)  # the same picture at 16 bits (65535 = 255 * 257)
    with Image.open(path16) as image:
        assert image.mode == "I;16"
    sixteen = _pixels(path16, min_size=80)
    assert torch.equal(sixteen, _pixels(path8, min_size=80))
    assert (sixteen == 255).float().mean().item() < 0.05  # PIL's convert("RGB") made 99.6 % of such pixels 255
    # arrays: uint16 scaled the same way (rounded to the nearest 8-bit level), PIL "I" images as 16-bit samples
    assert torch.equal(_pixels(picture.astype(np.uint16) * 257), _pixels(picture))
    assert torch.equal(_pixels(np.minimum(picture.astype(np.int32) * 257 + 128, 65535).astype(np.uint16)), _pixels(picture))
    assert torch.equal(_pixels(Image.fromarray(gray.astype(np.int32) * 257)), _pixels(Image.fromarray(gray)))
    wide = Image.fromarray(np.array([[0, 70000], [140000, 140000]], dtype=np.int32))
    with pytest.raises(ValueError, match="16-bit range"):
        _pixels(wide)
    assert _pixels(RangedImage(wide, (0, 140000)))[0].tolist() == [[0, 127.5], [255, 255]]


def test_float_arrays_outside_0_1_need_a_stated_range(picture):
    as_0_255 = picture.astype(np.float32)
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*RangedImage"):
        _pixels(as_0_255)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        _pixels(torch.from_numpy(as_0_255).permute(2, 0, 1))
    assert torch.equal(_pixels(RangedImage(as_0_255, (0, 255))), _pixels(picture))
    assert torch.equal(_pixels(RangedImage(torch.from_numpy(as_0_255).permute(2, 0, 1), (0, 255))), _pixels(picture))
    twelve_bit = RangedImage(picture.astype(np.int64) * 4095 / 255, (0, 4095))
    torch.testing.assert_close(_pixels(twelve_bit), _pixels(picture).float(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="outside value_range"):
        _pixels(RangedImage(as_0_255, (0, 100)))
    with pytest.raises(ValueError, match="white > black"):
        RangedImage(picture, (1, 1))
    # 0..1 floats keep working as before
    assert torch.equal(_pixels(as_0_255 / 255), torch.from_numpy(as_0_255 / 255).permute(2, 0, 1).float() * 255)


def test_nan_and_inf_pixels_are_refused(picture):
    for bad in (np.nan, np.inf):
        array = picture.astype(np.float32) / 255
        array[3, 4, 1] = bad
        with pytest.raises(ValueError, match="1 NaN/Inf pixel"):
            _pixels(array)
        with pytest.raises(ValueError, match="NaN/Inf"):
            _pixels(RangedImage(array * 255, (0, 255)))


def test_bool_and_wide_integer_arrays(picture):
    mask = picture[:, :, 0] > 128
    assert torch.equal(_pixels(mask), _pixels(Image.fromarray(mask)))  # bool → 0 / 255, as PIL's mode "1"
    assert set(_pixels(mask).unique().tolist()) == {0.0, 255.0}
    for dtype in (np.int64, np.int32, np.int16, np.uint32):
        with pytest.raises(ValueError, match="must be uint8 .* or uint16"):
            _pixels(picture.astype(dtype))
    with pytest.raises(ValueError, match="must be uint8"):
        _pixels(torch.from_numpy(picture.astype(np.int64)).permute(2, 0, 1))
    assert torch.equal(_pixels(RangedImage(picture.astype(np.int64), (0, 255))), _pixels(picture))
