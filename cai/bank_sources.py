"""The public stand-in anomaly bank (``make bank``): fetch, verify and convert public defect archives.

Each source in ``conf/bank/public.yaml`` names one public archive (a GitHub snapshot of CrackForest,
NEU-Seg or BSData), its sha256, the layout inside it and how its labels become anomaly classes. For
each source this module

1. finds the archive: ``<local_dir>/<file>`` when ``bank.local_dir`` is set (offline: put the archives
   there), else ``<download_dir>/<file>``, downloading ``url`` when it is not there yet;
2. checks its sha256 against the config. A mismatch is always an error. ``sha256: null`` means
   "unverified" and is refused unless ``bank.allow_unverified=true`` (then the computed digest is logged
   so that it can be pinned);
3. extracts it (zip or tar, refusing members that would land outside the target folder);
4. converts every labelled image into bank items ``<out_dir>/<class>/<source>_<stem>[_c<k>].png`` +
   ``_mask.png`` (label maps, MATLAB ``groundTruth.Segmentation`` files or labelme polygons), optionally
   cropped around the labelled regions, downsized to ``max_side`` and filtered by mask area;
5. writes ``<out_dir>/manifest.csv`` in the DAAD manifest format, which ``scripts/build_daad.py`` then
   harvests as a folder bank.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import logging
import shutil
import tarfile
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cai.bank import ANOMALY_CLASSES, SOURCE_GROUPS
from cai.errors import CaiError, ConfigError, DatasetError
from cai.io import read_image, write_text

log = logging.getLogger(__name__)

FORMATS = ("label_map", "mat_segmentation", "labelme")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_archive(path: Path, expected: str | None, *, name: str, allow_unverified: bool) -> str:
    """Check ``path`` against ``expected`` (hex sha256); return the actual digest.

    A wrong digest is always a :class:`ConfigError`; a missing one (``None``) is one too unless
    ``allow_unverified``.
    """
    actual = sha256_of(path)
    if expected is None:
        if not allow_unverified:
            raise ConfigError(
                f"Bank source {name!r} has no sha256 in the config (sha256: null = unverified), so its "
                f"archive is refused. Its sha256 is {actual}.",
                where=path,
                fix=f"Check the archive, then pin `sha256: {actual}` for {name} in conf/bank/public.yaml, "
                "or accept it once with bank.allow_unverified=true.",
            )
        log.warning("bank: %s is UNVERIFIED (sha256: null; accepted by bank.allow_unverified): sha256 %s",
                    name, actual)
        return actual
    if actual.lower() != str(expected).strip().lower():
        raise ConfigError(
            f"Checksum mismatch for bank source {name!r}: expected sha256 {expected}, got {actual}.",
            where=path,
            fix="Delete the file and download it again, or check that it is the archive the config names "
            "(a re-generated GitHub snapshot can differ; then verify it and update sha256).",
        )
    return actual


def fetch_archive(src: Mapping[str, Any], bank: Mapping[str, Any]) -> Path:
    """The verified archive of one source: from ``bank.local_dir`` if set, else downloaded (once)."""
    name, file = src["name"], src["file"]
    if bank.get("local_dir"):
        path = Path(bank["local_dir"]) / file
        if not path.is_file():
            raise DatasetError(
                f"Archive of bank source {name!r} not found in bank.local_dir.",
                where=path,
                fix=f"Download {src.get('url')} on a machine with internet and put it there as {file}.",
            )
    else:
        path = Path(bank["download_dir"]) / file
        if not path.is_file():
            if not src.get("url"):
                raise ConfigError(f"Bank source {name!r} has no url.", fix="Set its url, or bank.local_dir.")
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            log.info("bank: downloading %s -> %s", src["url"], path)
            try:
                with urllib.request.urlopen(src["url"], timeout=float(bank.get("timeout_s", 60))) as r, \
                        part.open("wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as err:
                part.unlink(missing_ok=True)
                raise CaiError(
                    f"Could not download bank source {name!r}: {err}",
                    where=src["url"],
                    fix=f"Offline: download it elsewhere, put it in a folder as {file} and set bank.local_dir.",
                ) from err
            part.replace(path)
    verify_archive(path, src.get("sha256"), name=name, allow_unverified=bool(bank.get("allow_unverified")))
    return path


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a zip / tar(.gz/.bz2/.xz) archive into ``dest`` (fresh); members may not escape it."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DatasetError(f"Archive member {member!r} would be written outside {dest}.", where=archive)
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")  # refuses absolute paths, '..' and links outside dest
    else:
        raise DatasetError("Not a zip or tar archive.", where=archive, fix="Check the downloaded file.")
    return dest


# -- label readers: each returns {class label (as written in the config) -> bool mask} ----------------
def _label_map(path: Path) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError("Unreadable label image.", where=path)
    return raw if raw.ndim == 2 else raw[..., 0]


def _mat_segmentation(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    gt = loadmat(str(path), squeeze_me=True, struct_as_record=False)["groundTruth"]
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DatasetError("MATLAB ground truth without groundTruth.Segmentation.", where=path)
    return np.asarray(seg)


def read_label_masks(path: Path, fmt: str, classes: Mapping[Any, str], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks per anomaly class from one label file (``classes`` maps a label value / name to a class)."""
    out: dict[str, np.ndarray] = {}
    if fmt in ("label_map", "mat_segmentation"):
        labels = _label_map(path) if fmt == "label_map" else _mat_segmentation(path)
        if labels.shape[:2] != shape:
            raise DatasetError(f"Label size {labels.shape[:2]} differs from its image {shape}.", where=path)
        for value, cls in classes.items():
            m = labels == int(value)
            out[cls] = out[cls] | m if cls in out else m
    elif fmt == "labelme":
        doc = json.loads(path.read_text())
        wanted = {str(k).lower(): v for k, v in classes.items()}
        for shape_ in doc.get("shapes", []):
            cls = wanted.get(str(shape_.get("label", "")).lower())
            if cls is None:
                continue
            canvas = out.setdefault(cls, np.zeros(shape, bool)).astype(np.uint8)
            pts = np.round(np.asarray(shape_["points"], dtype=np.float64)).astype(np.int32)
            cv2.fillPoly(canvas, [pts], 1)
            out[cls] = canvas.astype(bool)
    else:
        raise ConfigError(f"Unknown label format {fmt!r}.", fix=f"Use one of {list(FORMATS)}.")
    return out


def crop_windows(mask: np.ndarray, min_side: int, max_crops: int) -> list[tuple[int, int, int, int]]:
    """Square windows (y0, x0, y1, x1) of at least ``min_side`` px around the largest labelled regions.

    Connected regions are taken largest first; a region already inside an earlier window is skipped.
    """
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    h, w = mask.shape
    windows: list[tuple[int, int, int, int]] = []
    for i in order:
        if len(windows) >= max_crops:
            break
        x, y, bw, bh = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP,
                                                   cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
        if any(y0 <= y and x0 <= x and y + bh <= y1 and x + bw <= x1 for y0, x0, y1, x1 in windows):
            continue
        side = min(max(min_side, bw, bh), h, w)
        cy, cx = y + bh // 2, x + bw // 2
        y0, x0 = min(max(0, cy - side // 2), h - side), min(max(0, cx - side // 2), w - side)
        windows.append((y0, x0, y0 + side, x0 + side))
    return windows


def _downsize(image: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = mask.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return image, mask
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    return small, small_mask


def convert_source(src: Mapping[str, Any], tree: Path, out_dir: Path, bank: Mapping[str, Any]) -> list[list[Any]]:
    """Turn one extracted source tree into bank items under ``out_dir``; return its manifest rows."""
    name, fmt = src["name"], src["format"]
    if fmt not in FORMATS:
        raise ConfigError(f"Bank source {name!r}: unknown format {fmt!r}.", fix=f"Use one of {list(FORMATS)}.")
    classes = {k: str(v).lower() for k, v in (src.get("classes") or {}).items()}
    bad = sorted(set(classes.values()) - set(ANOMALY_CLASSES))
    if bad or not classes:
        raise ConfigError(f"Bank source {name!r}: classes must map labels to {list(ANOMALY_CLASSES)}; got {bad}.")
    group = src.get("source_group", "existing_datasets")
    if group not in SOURCE_GROUPS:
        raise ConfigError(f"Bank source {name!r}: unknown source_group {group!r}.", fix=f"Use {list(SOURCE_GROUPS)}.")
    base = tree / src["root"] if src.get("root") else tree
    images = sorted(p for p in base.glob(src["images"]) if fnmatch.fnmatch(p.name, src.get("name_glob") or "*"))
    if not images:
        raise DatasetError(f"Bank source {name!r}: no image matches {src['images']!r}.", where=base,
                           fix="Check the source's root / images pattern against the archive's layout.")
    crop = src.get("crop")
    min_area, max_side = float(bank["min_mask_area"]), int(bank["max_side"])
    rows: list[list[Any]] = []
    skipped: Counter[str] = Counter()
    for img_path in images:
        label_path = base / src["labels"].format(stem=img_path.stem)
        if not label_path.is_file():
            skipped["no label file"] += 1
            continue
        image = read_image(img_path)
        masks = read_label_masks(label_path, fmt, classes, image.shape[:2])
        for cls, mask in sorted(masks.items()):
            windows = (crop_windows(mask, int(crop["min_side"]), int(crop["max_crops"])) if crop
                       else [(0, 0, *mask.shape)])
            for k, (y0, x0, y1, x1) in enumerate(windows):
                im, m = _downsize(image[y0:y1, x0:x1], mask[y0:y1, x0:x1], max_side)
                if m.mean() < min_area:
                    skipped["mask below min_mask_area"] += 1
                    continue
                stem = f"{name}_{img_path.stem}" + (f"_c{k}" if crop else "") + (
                    f"_{cls}" if len(set(classes.values())) > 1 else "")
                (out_dir / cls).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out_dir / cls / f"{stem}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(out_dir / cls / f"{stem}_mask.png"), m.astype(np.uint8) * 255)
                rows.append([f"{cls}/{stem}.png", f"{cls}/{stem}_mask.png", cls, name, group,
                             src.get("license_note", ""), m.shape[0], m.shape[1], f"{m.mean():.6f}"])
    per_class = src.get("max_per_class")
    if per_class:
        kept: list[list[Any]] = []
        for cls in sorted({r[2] for r in rows}):
            of_cls = [r for r in rows if r[2] == cls]
            if len(of_cls) > per_class:  # evenly spaced over the sorted list: deterministic
                idx = set(np.linspace(0, len(of_cls) - 1, int(per_class)).round().astype(int).tolist())
                for i, r in enumerate(of_cls):
                    if i not in idx:
                        (out_dir / r[0]).unlink()
                        (out_dir / r[1]).unlink()
                of_cls = [r for i, r in enumerate(of_cls) if i in idx]
            kept += of_cls
        rows = kept
    log.info("bank: %s -> %d items %s; skipped %s", name, len(rows), dict(Counter(r[2] for r in rows)),
             dict(skipped) or "none")
    return rows


def build_public_bank(bank: Mapping[str, Any]) -> Path:
    """Fetch, verify, extract and convert every source of ``bank``; return the folder bank's root."""
    sources = bank.get("sources") or []
    if not sources:
        raise ConfigError("bank.sources is empty.", fix="Use bank=public (conf/bank/public.yaml).")
    out_dir = Path(bank["out_dir"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    rows: list[list[Any]] = []
    for src in sources:
        archive = fetch_archive(src, bank)
        tree = extract_archive(archive, Path(bank["work_dir"]) / src["name"])
        rows += convert_source(src, tree, out_dir, bank)
        if not bank.get("keep_extracted"):
            shutil.rmtree(tree)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "mask", "anomaly_class", "source", "source_group", "license_note", "height", "width",
                "mask_area_frac"])
    w.writerows(rows)
    write_text(out_dir / "manifest.csv", buf.getvalue())
    log.info("bank: %d items in %s", len(rows), out_dir)
    return out_dir
