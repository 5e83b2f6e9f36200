"""The anomaly bank: DAAD-style real anomalies from other domains (paper §3.2), and how it is built.

A bank is a **manifest** (CSV, one row per anomaly image) with the columns

=============== ================================================================================
``image``       path of the anomaly image (absolute, or relative to the manifest's folder)
``mask``        path of its binary mask (same size; 0 = normal, 255 = anomaly)
``anomaly_class`` one of the paper's 8 classes (:data:`ANOMALY_CLASSES`)
``source``      where it comes from (``mvtec``, ``visa``, ``ksdd2``, ``bsdata``, ``neu`` …): the key of
                the leakage rule
``source_group`` optional; one of :data:`SOURCE_GROUPS`. When absent or empty it is looked up in a
                ``source -> group`` mapping given by the config (``source_group_of``).
=============== ================================================================================

Extra columns are ignored, so ``shared/data/daad_mini/manifest.csv`` is a valid bank manifest as is.

**Leakage rule** (§3.2, "if an existing dataset is used for evaluation, its data will be strictly
excluded"): every item whose ``source`` is one of the target's ``leakage_sources`` is dropped, always,
before any other filter, and the number dropped is logged. Source names on both sides go through ONE
alias table, ``conf/daad/sources/aliases.yaml`` (canonical name -> aliases; :func:`canonical_source`),
so ``mvtec_ad`` in a manifest is dropped by ``leakage_sources: [mvtec]``; an unknown source name is a
:class:`ConfigError` (it could not be matched against any target, so it might leak).
Items are loaded lazily and cached as a
:class:`Pattern`: the mask's bounding box plus some context (official code, ``find_white_pixels`` +
``crop_image`` in ``CAI/CAI_utils_functions.py``; the STR of Eq. 1 uses that box).

Building a manifest (``scripts/build_daad.py``) harvests (a) the test anomalies of MVTec-layout
datasets through a defect-type -> anomaly-class table (``conf/daad/tables/*.yaml``) and (b) folders
laid out like ``shared/data/daad_mini`` (``<class>/<name>.png`` + ``<name>_mask.png`` + ``manifest.csv``).
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from cai.errors import ConfigError, DatasetError
from cai.io import IMAGE_SUFFIXES, existing_file, list_images, read_image, read_mask, write_text

log = logging.getLogger(__name__)

#: The paper's eight anomaly classes (§3.2, "Anomaly Categorization and Annotation").
ANOMALY_CLASSES: tuple[str, ...] = (
    "pits",
    "crack",
    "hole",
    "stain",
    "scratch",
    "orifice",
    "impurity",
    "abrasion",
)
#: The paper's three collection sources (§3.2, "Real Anomaly Collection"; Fig. 7c: OS, RP, ED).
SOURCE_GROUPS: tuple[str, ...] = ("online_search", "reality_photographing", "existing_datasets")

MANIFEST_COLUMNS: tuple[str, ...] = ("image", "mask", "anomaly_class", "source", "source_group", "origin")
_REQUIRED_COLUMNS = ("image", "mask", "anomaly_class", "source")


@dataclass(frozen=True)
class BankItem:
    """One real anomaly: image + mask paths, its anomaly class, source dataset and source group."""

    image: Path
    mask: Path
    anomaly_class: str
    source: str
    source_group: str


@dataclass(frozen=True)
class Pattern:
    """A bank item pre-cropped for injection.

    ``image``/``mask`` are the crop of the source around the mask's bounding box, with up to
    ``context`` pixels of the source image on every side (fewer at the source's border); ``box`` =
    (top, left, height, width) of the mask's bounding box inside the crop. ``s_a`` is the longest side
    of that box in source pixels (Eq. 1).
    """

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]

    @property
    def s_a(self) -> int:
        return max(self.box[2], self.box[3])


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the minimum box holding all True pixels, or None if empty.

    This is ``minbb`` of Eq. 1 (official: ``find_white_pixels``, which drops the last row/column by
    using PIL's exclusive crop end; here the box is inclusive).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def crop_pattern(image: np.ndarray, mask: np.ndarray, context_frac: float) -> Pattern | None:
    """Crop ``image``/``mask`` to the mask's bounding box plus ``ceil(context_frac * s_a)`` px of context.

    The context gives Poisson editing real source pixels around the anomaly: all around the box for
    CAI's ``clone.region: context``, and only to widen boxes thinner than ``clone.min_side`` for the
    official region (the official code crops the bare box and pads thin patterns with black, a defect
    not inherited).
    """
    box = mask_bbox(mask)
    if box is None:
        return None
    top, left, h, w = box
    margin = math.ceil(context_frac * max(h, w))
    y0, x0 = max(0, top - margin), max(0, left - margin)
    y1, x1 = min(mask.shape[0], top + h + margin), min(mask.shape[1], left + w + margin)
    return Pattern(
        image=np.ascontiguousarray(image[y0:y1, x0:x1]),
        mask=np.ascontiguousarray(mask[y0:y1, x0:x1]),
        box=(top - y0, left - x0, h, w),
    )


#: The alias table of source names (canonical name -> list of aliases).
SOURCE_ALIASES_FILE = Path(__file__).resolve().parents[1] / "conf" / "daad" / "sources" / "aliases.yaml"


def _norm(name: str) -> str:
    return name.strip().lower()


def _key(name: str) -> str:
    """Spelling-insensitive form of a source name: lower case, '-', ' ' and '.' as '_'."""
    return re.sub(r"[\s.\-]+", "_", _norm(str(name)))


@functools.lru_cache(maxsize=8)
def load_source_aliases(path: str | Path = SOURCE_ALIASES_FILE) -> dict[str, str]:
    """``{spelling: canonical}`` from an alias table (canonical names map to themselves)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("The source alias table is missing.", where=path,
                          fix="Restore conf/daad/sources/aliases.yaml (canonical name -> aliases).")
    table = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    out: dict[str, str] = {}
    for canonical, aliases in table.items():
        for name in (canonical, *(aliases or ())):
            key, canon = _key(name), _key(canonical)
            if out.get(key, canon) != canon:
                raise ConfigError(f"Source name {name!r} is an alias of both {out[key]!r} and {canon!r}.",
                                  where=path, fix="Give every alias to one canonical source only.")
            out[key] = canon
    return out


def canonical_source(name: str, aliases: Mapping[str, str] | None = None, where: str | Path | None = None) -> str:
    """The canonical name of source ``name`` (e.g. ``MVTec-AD`` -> ``mvtec``); ConfigError if unknown."""
    table = load_source_aliases() if aliases is None else aliases
    try:
        return table[_key(name)]
    except KeyError:
        raise ConfigError(
            f"Unknown anomaly-bank source {name!r}: the leakage rule cannot match it to any dataset.",
            where=where,
            fix=f"Use a source listed in {SOURCE_ALIASES_FILE} (canonical: {sorted(set(table.values()))}), "
            "or add it there (as a new canonical name or as an alias of one).",
        ) from None


def _check_subset(values: Iterable[str] | None, allowed: Sequence[str], key: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    chosen = tuple(_norm(v) for v in values)
    bad = sorted(set(chosen) - set(allowed))
    if bad:
        raise ConfigError(
            f"Unknown value(s) {bad} in {key}.", fix=f"Use a subset of {list(allowed)} (or null for all)."
        )
    return chosen


def filter_items(
    items: Sequence[BankItem],
    *,
    classes: Iterable[str] | None = None,
    source_groups: Iterable[str] | None = None,
    leakage_sources: Iterable[str] = (),
    where: str | Path | None = None,
) -> list[BankItem]:
    """Apply the leakage rule (always first), then the class and source-group subsets.

    Raises :class:`ConfigError` naming the filter that left the bank empty.
    """
    cls = _check_subset(classes, ANOMALY_CLASSES, "daad.classes")
    groups = _check_subset(source_groups, SOURCE_GROUPS, "daad.source_groups")
    leak = {canonical_source(s, where="dataset.leakage_sources") for s in leakage_sources}
    out = list(items)
    if not out:
        raise ConfigError("The anomaly bank manifest lists no items.", where=where)

    source_of = {it.source: canonical_source(it.source, where=where) for it in out}
    kept = [it for it in out if source_of[it.source] not in leak]
    dropped = Counter(it.source for it in out if source_of[it.source] in leak)
    log.info(
        "anomaly bank: leakage rule dropped %d of %d items (leakage sources %s%s)",
        len(out) - len(kept),
        len(out),
        sorted(leak) or "none",
        f"; by source {dict(dropped)}" if dropped else "",
    )
    if not kept:
        raise ConfigError(
            f"The leakage rule (drop sources {sorted(leak)}) removed all {len(out)} bank items.",
            where=where,
            fix="Add anomalies from other sources to the bank; the target's own data may never be used.",
        )
    out = kept
    if cls is not None:
        kept = [it for it in out if it.anomaly_class in cls]
        log.info("anomaly bank: class filter %s kept %d of %d items", list(cls), len(kept), len(out))
        if not kept:
            have = sorted({it.anomaly_class for it in out})
            raise ConfigError(
                f"The class filter daad.classes={list(cls)} left the anomaly bank empty "
                f"(after the leakage rule the bank has the classes {have}).",
                where=where,
                fix="Choose classes the bank has, or null for all.",
            )
        out = kept
    if groups is not None:
        kept = [it for it in out if it.source_group in groups]
        log.info(
            "anomaly bank: source-group filter %s kept %d of %d items", list(groups), len(kept), len(out)
        )
        if not kept:
            have = sorted({it.source_group for it in out})
            raise ConfigError(
                f"The source-group filter daad.source_groups={list(groups)} left the anomaly bank empty "
                f"(the remaining items come from {have}).",
                where=where,
                fix="Choose source groups the bank has, or null for all.",
            )
        out = kept
    return out


def read_manifest(
    path: str | Path,
    *,
    source_group_of: Mapping[str, str] | None = None,
    root: str | Path | None = None,
) -> list[BankItem]:
    """Read a bank manifest CSV (see the module docstring) into :class:`BankItem` s.

    Relative paths are resolved against ``root`` (default: the manifest's folder). A row without a
    ``source_group`` takes ``source_group_of[source]``; a source with neither raises ConfigError.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            "Anomaly bank manifest not found.",
            where=path,
            fix="Point daad.manifest at a manifest.csv (e.g. shared/data/daad_mini), or run build_daad.",
        )
    base = Path(root) if root is not None else path.parent
    group_of = {canonical_source(k, where="daad.source_group_of"): _norm(v)
                for k, v in (source_group_of or {}).items()}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"Anomaly bank manifest lacks the column(s) {missing}.",
                where=path,
                fix=f"A manifest needs the columns {list(_REQUIRED_COLUMNS)} (+ optional source_group).",
            )
        rows = list(reader)
    aliases = load_source_aliases()
    unknown = sorted({row["source"] for row in rows if _key(row["source"]) not in aliases})
    if unknown:
        raise ConfigError(
            f"Unknown anomaly-bank source(s) {unknown}: the leakage rule cannot match them to any dataset.",
            where=path,
            fix=f"Use sources listed in {SOURCE_ALIASES_FILE}, or add them there (canonical name or alias).",
        )
    items, unmapped, bad_class, bad_group = [], set(), set(), set()
    for row in rows:
        source = canonical_source(row["source"], aliases, where=path)
        anomaly_class = _norm(row["anomaly_class"])
        group = _norm(row.get("source_group") or "") or group_of.get(source, "")
        if not group:
            unmapped.add(source)
            continue
        if anomaly_class not in ANOMALY_CLASSES:
            bad_class.add(anomaly_class)
        if group not in SOURCE_GROUPS:
            bad_group.add(group)
        items.append(
            BankItem(
                image=(base / row["image"]).resolve(),
                mask=(base / row["mask"]).resolve(),
                anomaly_class=anomaly_class,
                source=source,
                source_group=group,
            )
        )
    if unmapped:
        raise ConfigError(
            f"No source group for the source(s) {sorted(unmapped)}.",
            where=path,
            fix="Add a source_group column, or map each source in daad.source_group_of "
            f"to one of {list(SOURCE_GROUPS)}.",
        )
    if bad_class:
        raise ConfigError(
            f"Unknown anomaly class(es) {sorted(bad_class)} in the manifest.",
            where=path,
            fix=f"Use the paper's classes {list(ANOMALY_CLASSES)}.",
        )
    if bad_group:
        raise ConfigError(
            f"Unknown source group(s) {sorted(bad_group)}.", where=path, fix=f"Use {list(SOURCE_GROUPS)}."
        )
    return items


class AnomalyBank:
    """A filtered list of :class:`BankItem` s whose patterns are loaded lazily and cached.

    ``pattern(i)`` reads item ``i`` on first use, crops it with :func:`crop_pattern` and keeps the
    crop; it returns None (and warns once per item) when the mask is empty. Thread-safe.
    """

    def __init__(self, items: Sequence[BankItem], *, context_frac: float = 0.25) -> None:
        if not items:
            raise ConfigError("An anomaly bank needs at least one item.")
        self.items: tuple[BankItem, ...] = tuple(items)
        self.context_frac = float(context_frac)
        self._cache: dict[int, Pattern | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_manifest(
        cls,
        manifest: str | Path,
        *,
        leakage_sources: Iterable[str] = (),
        classes: Iterable[str] | None = None,
        source_groups: Iterable[str] | None = None,
        source_group_of: Mapping[str, str] | None = None,
        root: str | Path | None = None,
        context_frac: float = 0.25,
    ) -> AnomalyBank:
        """Read ``manifest`` and apply :func:`filter_items` (leakage rule first)."""
        items = read_manifest(manifest, source_group_of=source_group_of, root=root)
        items = filter_items(
            items,
            classes=classes,
            source_groups=source_groups,
            leakage_sources=leakage_sources,
            where=manifest,
        )
        log.info(
            "anomaly bank: %d items, by class %s",
            len(items),
            dict(sorted(Counter(it.anomaly_class for it in items).items())),
        )
        return cls(items, context_frac=context_frac)

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], leakage_sources: Iterable[str] = (), context_frac: float = 0.25
    ) -> AnomalyBank:
        """Build from a ``daad`` config node (keys: manifest, root, classes, source_groups,
        source_group_of); ``context_frac`` comes from the synthesizer's clone settings."""
        cfg = dict(cfg)
        if not cfg.get("manifest"):
            raise ConfigError("daad.manifest is not set.", fix="Set it to a bank manifest.csv path.")
        return cls.from_manifest(
            cfg["manifest"],
            leakage_sources=leakage_sources,
            classes=cfg.get("classes"),
            source_groups=cfg.get("source_groups"),
            source_group_of=cfg.get("source_group_of"),
            root=cfg.get("root"),
            context_frac=context_frac,
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> BankItem:
        return self.items[index]

    def pattern(self, index: int) -> Pattern | None:
        """The cropped pattern of item ``index`` (loaded on first use)."""
        try:
            return self._cache[index]
        except KeyError:
            pass
        item = self.items[index]
        image = read_image(item.image)
        mask = read_mask(item.mask, shape=image.shape[:2])
        pat = crop_pattern(image, mask, self.context_frac)
        if pat is None:
            log.warning("anomaly bank: empty mask, item skipped: %s", item.mask)
        with self._lock:
            self._cache[index] = pat
        return pat

    def preload(self) -> None:
        """Load every pattern now (e.g. before forking workers)."""
        for i in range(len(self)):
            self.pattern(i)


# --------------------------------------------------------------------------------------------------
# Building a manifest (scripts/build_daad.py)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    image: Path
    mask: Path
    anomaly_class: str
    source: str
    source_group: str
    origin: str


def lookup_class(table: Mapping[str, Any], category: str, defect: str) -> str | None:
    """Map a (category, defect type) to an anomaly class with a defect table.

    Lookup order: ``defects["<category>/<defect>"]``, ``defects["<defect>"]``,
    ``by_category[<category>]``, ``default``. A null (or absent) result means "no sensible class".
    """
    defects = table.get("defects") or {}
    for key in (f"{category}/{defect}", defect):
        if key in defects:
            return defects[key]
    by_cat = table.get("by_category") or {}
    if category in by_cat:
        return by_cat[category]
    return table.get("default")


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask.png", f"{stem}.png"):
        found = existing_file(gt_dir / name)  # the suffix in any case (.PNG)
        if found is not None:
            return found
    return None


def harvest_mvtec_layout(
    root: str | Path,
    table: Mapping[str, Any],
    *,
    source: str,
    source_group: str = "existing_datasets",
    categories: Iterable[str] | None = None,
) -> tuple[list[ManifestRow], list[str]]:
    """Collect the test anomalies of an MVTec-layout dataset as bank rows.

    Walks ``<root>/<category>/test/<defect>/<stem>.<ext>`` with masks in
    ``<root>/<category>/ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``); ``good`` is skipped.
    Returns the rows and a list of human-readable "left out" notes (defect types without a class,
    images without a mask).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            "Dataset root not found.", where=root, fix="Check the path in build_daad.datasets."
        )
    cats = (
        sorted(categories)
        if categories is not None
        else sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    )
    rows: list[ManifestRow] = []
    left_out: list[str] = []
    for cat in cats:
        test_dir = root / cat / "test"
        if not test_dir.is_dir():
            raise DatasetError("Category has no test folder.", where=test_dir)
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name != "good"):
            defect = defect_dir.name
            images = list_images(defect_dir)
            anomaly_class = lookup_class(table, cat, defect)
            if anomaly_class is None:
                left_out.append(f"{source}: {cat}/{defect} ({len(images)} images): no anomaly class")
                continue
            anomaly_class = _norm(anomaly_class)
            if anomaly_class not in ANOMALY_CLASSES:
                raise ConfigError(
                    f"Defect table maps {cat}/{defect} to unknown class {anomaly_class!r}.",
                    fix=f"Use one of {list(ANOMALY_CLASSES)} or null.",
                )
            gt_dir = root / cat / "ground_truth" / defect
            for img in images:
                mask = _find_mask(gt_dir, img.stem)
                if mask is None:
                    left_out.append(f"{source}: {cat}/{defect}/{img.name}: no mask in {gt_dir}")
                    continue
                rows.append(
                    ManifestRow(img, mask, anomaly_class, canonical_source(source), source_group, f"{cat}/{defect}")
                )
    return rows, left_out


def harvest_folder(
    root: str | Path,
    *,
    source_group_of: Mapping[str, str] | None = None,
    source: str | None = None,
    source_group: str | None = None,
) -> tuple[list[ManifestRow], list[str]]:
    """Collect a folder bank: ``<class>/<name>.<ext>`` + ``<class>/<name>_mask.png``.

    With a ``manifest.csv`` in ``root`` (as in ``shared/data/daad_mini``) its rows are used, the source
    group coming from its ``source_group`` column or ``source_group_of``. Without one, every image
    under a class folder is an item of ``source``/``source_group`` (e.g. a folder of online-search
    images).
    """
    root = Path(root)
    if (root / "manifest.csv").is_file():
        items = read_manifest(root / "manifest.csv", source_group_of=source_group_of)
        rows = [
            ManifestRow(
                it.image, it.mask, it.anomaly_class, it.source, it.source_group, f"folder:{root.name}"
            )
            for it in items
        ]
        return rows, []
    if source is None or source_group is None:
        raise ConfigError("A folder bank without manifest.csv needs `source` and `source_group`.", where=root)
    group = _norm(source_group)
    if group not in SOURCE_GROUPS:
        raise ConfigError(f"Unknown source group {source_group!r}.", fix=f"Use one of {list(SOURCE_GROUPS)}.")
    rows, left_out = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        cls = _norm(class_dir.name)
        if cls not in ANOMALY_CLASSES:
            left_out.append(f"{root}: folder {class_dir.name!r} is not an anomaly class")
            continue
        for img in list_images(class_dir):
            if img.stem.endswith("_mask") or img.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            mask = existing_file(class_dir / f"{img.stem}_mask.png") or class_dir / f"{img.stem}_mask.png"
            if not mask.is_file():  # (any case of the suffix: .PNG)
                left_out.append(f"{img}: no mask {mask.name}")
                continue
            rows.append(ManifestRow(img, mask, cls, canonical_source(source), group, f"folder:{root.name}"))
    return rows, left_out


def write_manifest(path: str | Path, rows: Sequence[ManifestRow]) -> None:
    """Atomically write a bank manifest CSV (absolute paths) with :data:`MANIFEST_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for r in rows:
        writer.writerow(
            [r.image.resolve(), r.mask.resolve(), r.anomaly_class, r.source, r.source_group, r.origin]
        )
    write_text(path, buf.getvalue())


def build_manifest(
    out: str | Path,
    *,
    datasets: Sequence[Mapping[str, Any]] = (),
    folders: Sequence[Mapping[str, Any]] = (),
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    source_group_of: Mapping[str, str] | None = None,
) -> tuple[list[ManifestRow], list[str]]:
    """Harvest MVTec-layout ``datasets`` and folder banks into one manifest at ``out``.

    ``datasets`` entries: ``root``, ``table`` (a key of ``tables``), optional ``source`` (default: the
    table's ``source``), ``categories``. ``folders`` entries: ``root`` and, without a manifest.csv,
    ``source`` + ``source_group``. Returns the rows and the left-out notes (also logged).
    """
    tables = tables or {}
    rows: list[ManifestRow] = []
    left_out: list[str] = []
    for ds in datasets:
        name = ds.get("table")
        if name not in tables:
            raise ConfigError(f"Unknown defect table {name!r}.", fix=f"Use one of {sorted(tables)}.")
        table = tables[name]
        source = ds.get("source") or table.get("source") or name
        r, lo = harvest_mvtec_layout(ds["root"], table, source=source, categories=ds.get("categories"))
        log.info("build_daad: %s -> %d items from %s", source, len(r), ds["root"])
        rows += r
        left_out += lo
    for fo in folders:
        r, lo = harvest_folder(
            fo["root"],
            source_group_of=fo.get("source_group_of", source_group_of),
            source=fo.get("source"),
            source_group=fo.get("source_group"),
        )
        log.info("build_daad: %d items from folder %s", len(r), fo["root"])
        rows += r
        left_out += lo
    for note in left_out:
        log.info("build_daad: left out %s", note)
    if not rows:
        raise ConfigError("build_daad found no anomaly items.", fix="Check build_daad.datasets / folders.")
    write_manifest(out, rows)
    counts = Counter((r.anomaly_class, r.source) for r in rows)
    log.info("build_daad: wrote %d items to %s: %s", len(rows), out, dict(sorted(counts.items())))
    return rows, left_out
