"""cai.io edge cases: every image file becomes RGB uint8, every mask bool by one documented rule."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageOps

from cai.errors import DatasetError
from cai.io import binarize_mask, list_images, read_image, read_mask, write_png


def cv2_write(path: Path, array: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, array)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# ------------------------------------------------------------------------------------------ images


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    img = read_image(cv2_write(tmp_path / "g.png", grey))
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    assert (img == grey[:, :, None]).all()


def test_colour_comes_back_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200  # red
    write_png(tmp_path / "red.png", rgb)
    assert (read_image(tmp_path / "red.png") == rgb).all()
    assert (cv2.imread(str(tmp_path / "red.png"))[..., 2] == 200).all()  # stored as a real red PNG


def test_16bit_is_scaled_to_8bit(tmp_path: Path) -> None:
    raw = np.array([[0, 257, 65535], [257 * 100, 257 * 200, 128]], np.uint16)
    img = read_image(cv2_write(tmp_path / "d.png", raw))
    assert img.dtype == np.uint8
    assert img[..., 0].tolist() == [[0, 1, 255], [100, 200, 0]]


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (2, 2, 3) and img[0, 0].tolist() == [10, 20, 30]


def test_palette_image_gives_its_colours(tmp_path: Path) -> None:
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    pal.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img[0, 1].tolist() == [255, 0, 0] and img[1, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_a_dataset_error(tmp_path: Path, suffix: str) -> None:
    path = cv2_write(tmp_path / f"t{suffix}", np.full((32, 32, 3), 99, np.uint8))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DatasetError) as exc:
        read_image(path)
    assert str(path) in str(exc.value)


def test_empty_missing_and_non_image_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    for name in ("empty.png", "text.png", "absent.png"):
        with pytest.raises(DatasetError, match=name):
            read_image(tmp_path / name)


def test_list_images_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "c.txt", ".hidden.png", "d.bmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "d.bmp"]
    assert list_images(tmp_path / "absent") == []


# ------------------------------------------------------------------------------------ EXIF orientation


def _with_orientation(path: Path, image: Image.Image, orientation: int, **save: object) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), **save)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_turns_the_image_as_viewers_show_it(tmp_path: Path, suffix: str, orientation: int) -> None:
    """A phone photo stores its pixels sideways with an orientation tag; read_image ignored the tag, so the image
    came out turned against the mask a user drew on it as every viewer shows it. Now it matches PIL's
    ImageOps.exif_transpose (lossless PNG: exactly) and OpenCV's IMREAD_COLOR (JPEG: the same decoder)."""
    stored = np.random.default_rng(orientation).integers(0, 256, (20, 30, 3), np.uint8)
    path = _with_orientation(tmp_path / f"photo{suffix}", Image.fromarray(stored), orientation, quality=95)
    got = read_image(path)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert got.shape == ((30, 20, 3) if orientation >= 5 else (20, 30, 3)) and got.dtype == np.uint8
    if suffix == ".png":
        assert np.array_equal(got, upright)
    else:
        assert np.array_equal(got, cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])
        assert np.abs(got.astype(int) - upright).max() <= 2


def test_exif_orientation_keeps_16bit_grey_and_turns_a_mask_with_its_image(tmp_path: Path) -> None:
    """16-bit / grey files keep their conversion rules after turning; a mask file with the same tag turns the same
    way, so read_mask's size check against the upright image passes and the pixels stay aligned."""
    grey = (np.arange(6 * 4, dtype=np.uint16).reshape(6, 4) * 2570)
    path = _with_orientation(tmp_path / "g16.png", Image.fromarray(grey), 6)
    img = read_image(path)
    assert img.shape == (4, 6, 3) and img[..., 0].tolist() == np.rot90(grey // 257, -1).tolist()
    stored_mask = np.zeros((6, 4), np.uint8)
    stored_mask[0, :2] = 255  # top-left corner as stored: top-right once turned 90° clockwise
    mask = read_mask(_with_orientation(tmp_path / "m.png", Image.fromarray(stored_mask), 6), shape=img.shape[:2])
    assert mask.shape == (4, 6) and np.argwhere(mask).tolist() == [[0, 5], [1, 5]]
    assert read_mask(cv2_write(tmp_path / "plain.png", stored_mask)).shape == (6, 4)  # no tag: as stored


def test_files_without_an_orientation_read_exactly_as_before(tmp_path: Path) -> None:
    """No tag, orientation 1 or EXIF without an orientation: the decoded pixels, unchanged (datasets stay
    byte-identical); a malformed EXIF block is ignored, never an error."""
    from cai.io import exif_orientation

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 5, 3), np.uint8)
    files = [cv2_write(tmp_path / f"a{s}", rgb[:, :, ::-1]) for s in (".png", ".jpg", ".bmp", ".tif")]
    files.append(_with_orientation(tmp_path / "one.jpg", Image.fromarray(rgb), 1, quality=90))
    camera = Image.Exif()
    camera[0x010F] = "phone maker"  # EXIF that says nothing about orientation
    Image.fromarray(rgb).save(tmp_path / "camera.jpg", exif=camera.tobytes(), quality=90)
    files.append(tmp_path / "camera.jpg")
    for path in files:
        raw = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        assert read_image(path).tobytes() == np.ascontiguousarray(raw[:, :, ::-1]).tobytes(), path
    grey16 = cv2_write(tmp_path / "g.png", rng.integers(0, 65536, (3, 4), np.uint16))
    raw16 = cv2.imdecode(np.fromfile(grey16, np.uint8), cv2.IMREAD_UNCHANGED)
    assert read_image(grey16)[..., 1].tolist() == (raw16 / 257.0).round().astype(np.uint8).tolist()
    broken = bytearray(Path(files[4]).read_bytes())
    at = broken.find(b"Exif\0\0") + 6
    broken[at : at + 8] = b"XX\x00\x2a\xff\xff\xff\xff"  # unknown byte order, IFD far outside the block
    assert exif_orientation(bytes(broken)) == 1


# ------------------------------------------------------------------------------------------- masks


def test_mask_0_1_and_0_255(tmp_path: Path) -> None:
    m = np.array([[0, 1], [1, 0]], np.uint8)
    assert read_mask(cv2_write(tmp_path / "m01.png", m)).tolist() == [[False, True], [True, False]]
    assert read_mask(cv2_write(tmp_path / "m255.png", m * 255)).tolist() == [[False, True], [True, False]]


def test_rgb_mask_uses_any_channel(tmp_path: Path) -> None:
    m = np.zeros((2, 3, 3), np.uint8)
    m[0, 0, 2] = 255  # red only (BGR order on disk)
    m[0, 1, 1] = 255  # green only
    got = read_mask(cv2_write(tmp_path / "rgb.png", m))
    assert got.tolist() == [[True, True, False], [False, False, False]]


def test_anti_aliased_mask_rule(tmp_path: Path) -> None:
    """Documented rule: above half the range is anomalous, so soft edges go to the majority side."""
    m = np.array([[0, 60, 127, 128, 200, 255]], np.uint8)
    assert read_mask(cv2_write(tmp_path / "aa.png", m)).tolist() == [[False, False, False, True, True, True]]


def test_16bit_mask(tmp_path: Path) -> None:
    m = np.array([[0, 65535, 1000]], np.uint16)
    assert read_mask(cv2_write(tmp_path / "m16.png", m)).tolist() == [[False, True, False]]


def test_mask_size_must_match_its_image(tmp_path: Path) -> None:
    path = cv2_write(tmp_path / "m.png", np.zeros((4, 6), np.uint8))
    assert read_mask(path, shape=(4, 6)).shape == (4, 6)
    with pytest.raises(DatasetError) as exc:
        read_mask(path, shape=(6, 4))
    assert str(path) in str(exc.value) and "6x4" in str(exc.value)


def test_truncated_mask_is_a_dataset_error(tmp_path: Path) -> None:
    path = cv2_write(tmp_path / "m.png", np.full((16, 16), 255, np.uint8))
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DatasetError, match="m.png"):
        read_mask(path)


def test_bool_mask_round_trip(tmp_path: Path) -> None:
    m = np.random.default_rng(0).random((9, 7)) > 0.5
    write_png(tmp_path / "m.png", m)
    assert set(np.unique(cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED))) <= {0, 255}
    assert (read_mask(tmp_path / "m.png") == m).all()


@given(arrays(np.uint8, (5, 5), elements=st.sampled_from([0, 255])))
def test_binarize_0_255_property(raw: np.ndarray) -> None:
    assert (binarize_mask(raw) == (raw == 255)).all()


def test_mask_rule_for_16bit_label_and_dim_masks() -> None:
    # 16-bit files that hold 0/255, label maps 0/1/2, and 0/65535 all binarise to "non-background".
    assert binarize_mask(np.array([[0, 255]], np.uint16)).tolist() == [[False, True]]
    assert binarize_mask(np.array([[0, 1, 2]], np.uint8)).tolist() == [[False, True, True]]
    assert binarize_mask(np.array([[0, 30000, 65535]], np.uint16)).tolist() == [[False, False, True]]
    # Anti-aliased 0/255 edge: 100 is below half of 255 (background), 200 above (anomalous).
    assert binarize_mask(np.array([[0, 100, 200, 255]], np.uint8)).tolist() == [[False, False, True, True]]
