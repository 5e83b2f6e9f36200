"""Image and mask reading with one normalisation rule, and atomic file writes.

Every image enters the library as RGB ``uint8`` (H, W, 3) and every mask as ``bool`` (H, W), whatever
the file holds (grayscale, 16-bit, RGBA, palette), upright as its EXIF orientation says (a phone photo).
Writes go to a temporary file in the same folder and are renamed into place, so an interrupted run never
leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cai.errors import DatasetError, StorageError

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _imread_raw(path: Path) -> np.ndarray:
    """The file's pixels as stored (depth, channels and alpha kept), turned upright as its EXIF orientation
    says (see :func:`exif_orientation`), so an image and a mask drawn on it as viewers show it stay aligned."""
    if not path.is_file():
        raise DatasetError("Image file not found.", where=path, fix="Check the dataset root and layout.")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise DatasetError(
            "Image file cannot be decoded (truncated, empty or not an image).",
            where=path,
            fix="Re-download or remove this file.",
        )
    return apply_orientation(img, exif_orientation(data))


# EXIF orientation (tag 0x0112) -> the array operation that shows the stored pixels upright, as every viewer,
# OpenCV's IMREAD_COLOR and PIL's ImageOps.exif_transpose do (2: mirrored, 3: 180°, 6: stored turned 90° left, ...)
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a[::-1].swapaxes(0, 1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: a[:, ::-1].swapaxes(0, 1),
}


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` (H, W) or (H, W, C) turned upright for EXIF ``orientation`` 1-8 (1 and unknown values: as is)."""
    turn = _ORIENT.get(orientation)
    return img if turn is None else np.ascontiguousarray(turn(img))


def exif_orientation(data: np.ndarray | bytes) -> int:
    """The EXIF orientation (1-8) of an encoded JPEG, PNG (``eXIf`` chunk) or WebP file, 1 when it has none
    (or it cannot be parsed: never an error). Only the headers are read, nothing is decoded. TIFF is left
    out because OpenCV's TIFF decoder already turns the image upright itself (libtiff honours the tag)."""
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    try:
        block = _exif_block(buf)
        return _tiff_orientation(block) if block is not None else 1
    except (struct.error, IndexError, ValueError):
        return 1


def _exif_block(buf: memoryview) -> memoryview | None:
    """The TIFF-structured EXIF block of a JPEG (APP1), PNG (eXIf) or WebP (EXIF chunk), else None."""
    head = bytes(buf[:12])
    if head[:2] == b"\xff\xd8":  # JPEG: markers up to the scan; EXIF is the APP1 segment starting "Exif\0\0"
        pos = 2
        while pos + 4 <= len(buf):
            if buf[pos] != 0xFF:
                return None
            marker = buf[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
                pos += 2
                continue
            if marker in (0xDA, 0xD9):  # start of scan / end of image: no EXIF before it
                return None
            (length,) = struct.unpack_from(">H", buf, pos + 2)
            if marker == 0xE1 and bytes(buf[pos + 4 : pos + 10]) == b"Exif\0\0":
                return buf[pos + 10 : pos + 2 + length]
            pos += 2 + length
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: chunk headers only (length, type), up to IEND
        pos = 8
        while pos + 8 <= len(buf):
            length, kind = struct.unpack_from(">I4s", buf, pos)
            if kind == b"eXIf":
                return buf[pos + 8 : pos + 8 + length]
            if kind == b"IEND":
                return None
            pos += 12 + length
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":  # WebP: RIFF chunks, EXIF (some writers keep "Exif\0\0")
        pos = 12
        while pos + 8 <= len(buf):
            kind, length = struct.unpack_from("<4sI", buf, pos)
            if kind == b"EXIF":
                block = buf[pos + 8 : pos + 8 + length]
                return block[6:] if bytes(block[:6]) == b"Exif\0\0" else block
            pos += 8 + length + (length & 1)
    return None


def _tiff_orientation(block: memoryview) -> int:
    """Tag 0x0112 of IFD0 of a TIFF-structured EXIF block (1 when absent or not a valid value)."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(block[:2]))
    if order is None:
        return 1
    magic, ifd = struct.unpack_from(order + "HI", block, 2)
    if magic != 42:
        return 1
    (count,) = struct.unpack_from(order + "H", block, ifd)
    for i in range(count):
        tag, kind, _, value = struct.unpack_from(order + "HHI4s", block, ifd + 2 + 12 * i)
        if tag == 0x0112:
            number = struct.unpack_from(order + ("H" if kind == 3 else "I"), value)[0] if kind in (3, 4) else 1
            return int(number) if 1 <= number <= 8 else 1
    return 1


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        top = 1.0 if float(np.nanmax(img)) <= 1.0 else 255.0
        return np.clip(img / top * 255.0, 0, 255).round().astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read any image file as RGB uint8 (H, W, 3).

    Grayscale is replicated to three channels, 16-bit is scaled to 8-bit, an alpha channel is dropped; an
    EXIF orientation (JPEG, PNG, WebP; TIFF through OpenCV) turns the image as every viewer shows it.
    """
    img = _to_uint8(_imread_raw(Path(path)))
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def binarize_mask(raw: np.ndarray) -> np.ndarray:
    """Binarise a mask array with the project's one rule.

    Channels are reduced by their maximum (so RGB and palette masks work). Then:
    * largest value < 128 (0/1 masks, small label maps such as 0/1/2, dim palette colours): every
      non-zero pixel is anomalous;
    * otherwise (0/255, 0/65535, anti-aliased edges, 16-bit files holding 0/255): pixels above half
      of the mask's largest value are anomalous, so soft edges go to the majority side.
    """
    m = raw.max(axis=2) if raw.ndim == 3 else raw
    top = float(m.max()) if m.size else 0.0
    if top < 128:
        return m > 0
    return m > top / 2


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file as bool (H, W); if ``shape`` is given the sizes must agree."""
    path = Path(path)
    raw = _imread_raw(path)
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[:, :, :3]
    mask = binarize_mask(raw)
    if shape is not None and mask.shape != tuple(shape):
        raise DatasetError(
            f"Mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's {shape[1]}x{shape[0]}.",
            where=path,
            fix="Masks must have the same width and height as their images.",
        )
    return mask


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an image to ``size`` (int = square, or (H, W)) with area/cubic interpolation."""
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    shrink = h < img.shape[0] and w < img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


MASK_MIN_COVERAGE = 0.5  # a resized pixel is anomalous when at least half of its area was (majority rule)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: the fraction of each output pixel's extent that each input pixel covers."""
    edges_out = np.arange(n_out + 1) * (n_in / n_out)
    lo = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges_out[1:, None], np.arange(1, n_in + 1)[None, :])
    return (np.clip(hi - lo, 0.0, None) * (n_out / n_in)).astype(np.float32)


def mask_coverage(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The fraction of each output pixel's area that ``mask`` covers after resizing to ``size`` (H, W)."""
    h, w = size
    rows, cols = _area_weights(mask.shape[0], h), _area_weights(mask.shape[1], w)
    return rows @ mask.astype(np.float32) @ cols.T


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a bool mask so that every defect survives: the one rule for test sets, banks and synthesizers.

    A pixel is anomalous when the anomalous area covers at least ``MASK_MIN_COVERAGE`` of it (exact
    area weights, up- or down-scaling). A connected defect (8-connectivity) that would then vanish, such
    as a 1-px scratch shrunk 4x, keeps every pixel it touches, so no anomalous image turns normal and
    thin defects stay lines instead of dotted remnants. When shrinking, the parts of a defect thinner than
    one output pixel (what a morphological opening with an output-pixel-sized box removes, e.g. a crack
    running out of a blob) also keep the output pixels their centre line (skeleton) touches, so a thin
    crack attached to a large blob is not cut off at the blob; a thin part that fits inside one output pixel
    (a staircase corner on a round blob's edge) is left to the majority rule, so blobs do not grow.
    """
    h, w = (size, size) if isinstance(size, int) else size
    mask = mask.astype(bool, copy=False)
    if mask.shape[:2] == (h, w):
        return mask
    out = mask_coverage(mask, (h, w)) >= MASK_MIN_COVERAGE - 1e-6
    if not mask.any():
        return out
    out |= _thin_part_cells(mask, (h, w))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    rows, cols = _area_weights(mask.shape[0], h), _area_weights(mask.shape[1], w)
    for c in range(1, n):
        x, y, bw, bh = stats[c, :4]
        part = (labels[y : y + bh, x : x + bw] == c).astype(np.float32)
        r, k = rows[:, y : y + bh], cols[:, x : x + bw]
        r_used, k_used = r.any(axis=1), k.any(axis=1)
        cov = r[r_used] @ part @ k[k_used].T
        if (cov >= MASK_MIN_COVERAGE - 1e-6).any():
            continue
        out[np.ix_(r_used, k_used)] |= cov > 0
    return out


def _thin_part_cells(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Output pixels touched by the centre line of the parts of ``mask`` thinner than one output pixel."""
    from skimage.morphology import opening, skeletonize

    h, w = size
    kh, kw = int(np.ceil(mask.shape[0] / h)), int(np.ceil(mask.shape[1] / w))
    out = np.zeros((h, w), bool)
    if kh <= 1 and kw <= 1:  # enlarging: nothing is thinner than an output pixel
        return out
    thin = mask & ~opening(mask, np.ones((kh, kw), bool))  # skimage: exact for even box sizes, unlike cv2
    if not thin.any():
        return out
    # a thin part that fits inside one output pixel is a crumb of a blob's boundary (a staircase corner the
    # opening cut off), not a line: left to the majority rule, so round blobs do not grow
    _, labels, stats, _ = cv2.connectedComponentsWithStats(thin.astype(np.uint8), connectivity=8)
    line = (stats[:, cv2.CC_STAT_HEIGHT] > kh) | (stats[:, cv2.CC_STAT_WIDTH] > kw)
    line[0] = False
    thin = line[labels]
    if not thin.any():
        return out
    rows, cols = np.nonzero(skeletonize(thin))
    out[(rows * h) // mask.shape[0], (cols * w) // mask.shape[1]] = True
    return out


_STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                   errno.EROFS: "the file system is read-only"}


def _storage_errno(err: BaseException) -> int | None:
    """The storage errno behind ``err`` (torch.save wraps OSError in RuntimeError), else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
            return err.errno
        if isinstance(err, RuntimeError) and hasattr(err, "cai_path"):  # torch.save's opaque writer errors
            return errno.ENOSPC if _free_bytes(err.cai_path) < max(1 << 20, getattr(err, "cai_need", 0)) else None
        err = err.__cause__ or err.__context__
    return None


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _mb(n: float) -> str:
    """A byte count for people: KB below 1 MB, MB below 1 GB, else GB."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{max(n, 0) / 2**10:.0f} KB"


def storage_error(path: Path, code: int, needed: int | None = None) -> StorageError:
    """One message for a write that failed because of the disk or permissions, naming the path."""
    path = Path(path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        need = f" This file needs about {_mb(needed)};" if needed else ""
        return StorageError(
            f"Cannot write: {_STORAGE_ERRNOS[code]}.{need} {_mb(_free_bytes(path))} free there.",
            where=path, fix="Free disk space (or point paths.cache_dir / hydra.run.dir elsewhere) and rerun the "
                            "same command; finished work is kept.")
    return StorageError(
        f"Cannot write: {_STORAGE_ERRNOS[code]}.", where=path,
        fix="Make the folder writable, or point paths.cache_dir / hydra.run.dir / hydra.sweep.dir to a writable "
            "place.")


def check_writable(folder: str | Path, what: str) -> None:
    """Create ``folder`` if needed and write/delete a probe file there; a failure is one clear StorageError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as err:
        if err.errno not in _STORAGE_ERRNOS:
            raise
        e = storage_error(folder, err.errno)
        raise StorageError(f"The {what} is not writable: {_STORAGE_ERRNOS[err.errno]}.", where=folder,
                           fix=e.fix) from err


def _atomic_write(path: Path, write: Callable[[Path], None], size_hint: int | None = None) -> None:
    """Write via a temporary file in the same folder, then rename; a disk/permission failure leaves no
    temporary file and becomes a :class:`StorageError` naming ``path`` (``size_hint``: bytes it needs)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(err, RuntimeError):
            err.cai_path, err.cai_need = path, size_hint or 0  # type: ignore[attr-defined]
        code = _storage_errno(err) if isinstance(err, Exception) else None
        if code is None:
            raise
        raise storage_error(path, code, needed=size_hint) from err


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Atomically write an RGB uint8 image or a bool/uint8 mask (bool saved as 0/255) as PNG."""
    if array.dtype == bool:
        out = array.astype(np.uint8) * 255
    elif array.ndim == 3:
        out = np.ascontiguousarray(array[:, :, ::-1])
    else:
        out = array

    def write(tmp: Path) -> None:
        ok, buf = cv2.imencode(".png", out)
        if not ok:
            raise OSError(f"PNG encoding failed for {path}")
        tmp.write_bytes(buf.tobytes())

    _atomic_write(Path(path), write, size_hint=out.nbytes)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside a (nested) checkpoint object: what ``torch.save`` will write."""
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
        return int(obj.element_size() * obj.nelement())
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_torch(path: str | Path, obj: Any) -> None:
    """Atomically ``torch.save`` a checkpoint (torch is imported only when used)."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # Python file writes raise OSError(ENOSPC) where torch's own would not
            torch.save(obj, f)

    _atomic_write(Path(path), write, size_hint=_tensor_bytes(obj) or None)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text), size_hint=len(text.encode()))


def json_safe(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` with every NaN / ±inf float (Python or NumPy) replaced by None, so that it is strict JSON: a bare
    ``NaN`` (what :func:`json.dumps` writes by default) is refused by jq, JavaScript and many other readers.
    Dicts, lists and tuples are walked; ``default`` (e.g. ``float``) converts values JSON cannot hold first."""
    if isinstance(obj, dict):
        return {k: json_safe(v, default) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, default) for v in obj]
    if isinstance(obj, float | np.floating):
        return obj if np.isfinite(obj) else None
    if default is not None and not isinstance(obj, str | int | bool | type(None)):
        return json_safe(default(obj))
    return obj


def json_text(obj: Any) -> str:
    """Strict JSON as :func:`write_json` writes it (sorted keys, indented; NaN / ±inf as null, other values
    JSON cannot hold as their ``str``)."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write :func:`json_text` (strict JSON: a NaN / ±inf value, e.g. a metric that was not
    measured, is written as null; readers take null as "no value")."""
    write_text(path, json_text(obj))


def existing_file(path: str | Path, listings: dict[Path, dict[tuple[str, str], Path]] | None = None) -> Path | None:
    """``path`` when it is a file; else the file in its folder whose name differs only in the case of the suffix
    (``0001.PNG`` or ``0001.Png`` for ``0001.png``: archives, cameras and Windows tools write them so); else None.
    ``listings`` (folder -> its files by (stem, lower-case suffix)) keeps folder listings for a whole dataset."""
    path = Path(path)
    if path.is_file():
        return path
    folder = path.parent
    if listings is None or folder not in listings:
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        listing = {}
        for f in files:
            if f.is_file() and not f.name.startswith("."):
                listing.setdefault((f.stem, f.suffix.lower()), f)
        if listings is None:
            return listing.get((path.stem, path.suffix.lower()))
        listings[folder] = listing
    return listings[folder].get((path.stem, path.suffix.lower()))


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden/temporary files and folders skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
