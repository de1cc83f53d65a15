import json

import numpy as np
import pytest
from PIL import Image

from promptseg.io import ImageLoadError, label_png, load_image, overlay, palette
from promptseg.io.rle import decode_rle, encode_rle


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "CMYK", "LA", "F"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray((np.arange(12 * 10 * 3) % 251).astype(np.uint8).reshape(12, 10, 3))
    if mode == "I;16":
        img = Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500)
        suffix = ".png"
    elif mode == "F":
        img = Image.fromarray(np.linspace(-1, 1, 120, dtype=np.float32).reshape(12, 10))
        suffix = ".tiff"
    else:
        img = base.convert(mode)
        suffix = ".tiff" if mode == "CMYK" else ".png"
    out = load_image(_save(img, tmp_path / f"x{suffix}"))
    assert out.mode == "RGB" and out.size == (10, 12)
    if mode in ("I;16", "F"):  # scaled from the image's own range
        arr = np.asarray(out)[..., 0]
        assert arr.min() == 0 and arr.max() == 255


def test_rgba_is_composited_over_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(_save(img, tmp_path / "a.png")))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 5, 10))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(_save(img, tmp_path / "r.jpg", exif=exif.tobytes(), quality=95))
    assert out.size == (10, 20)
    assert np.asarray(out)[:4, :, 0].mean() > 200  # the stripe is now on top


def test_bad_files_are_reported_by_name(tmp_path, monkeypatch):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png.*0 bytes"):
        load_image(empty)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="corrupt.jpg"):
        load_image(corrupt)
    with pytest.raises(ImageLoadError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")
    big = _save(Image.new("RGB", (64, 64)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="bomb.png.*decompression bomb"):
        load_image(big)


def test_palette_png_round_trips_indices(tmp_path):
    label_map = np.array([[0, 1, 2], [20, 1, 0]], dtype=np.int32)
    path = tmp_path / "l.png"
    label_png(label_map).save(path)
    back = Image.open(path)
    assert back.mode == "P" and np.array_equal(np.asarray(back), label_map)
    assert palette(3).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]  # the VOC colour map
    with pytest.raises(ValueError, match="0, 255"):
        label_png(np.array([[300]]))


def test_overlay_has_a_legend_row_per_label():
    img = Image.new("RGB", (30, 20), (255, 255, 255))
    out = overlay(img, np.zeros((20, 30), dtype=np.int32), ["background", "cat", "dog"])
    assert out.width == 30 and out.height == 20 + 14 * 3 + 4


def test_rle_matches_pycocotools_on_random_masks():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.random()
        ours = encode_rle(mask)
        ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["counts"] == ref["counts"].decode() and ours["size"] == [int(h), int(w)]
        assert np.array_equal(decode_rle(ours), mask)
        assert np.array_equal(mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()}), mask)
    json.dumps(encode_rle(np.ones((3, 3), bool)))  # JSON-serialisable
