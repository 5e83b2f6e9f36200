"""Readers for the on-disk dataset layouts (MVTec AD, any MVTec-layout folder such as MPDD, VisA,
KolektorSDD2, BTAD).

Each reader is built from config keywords (``name``, ``root``, ``categories``, ``textures``,
``download``) through Hydra's ``_target_`` and turns one category into a :class:`CategoryData` of
plain paths in a sorted, deterministic order. Anything missing or malformed on disk raises one
:class:`DatasetError` that names the path, the expected layout and where to get the dataset, so a
user sees what to fix instead of a stack trace. File suffixes match in any case (``.PNG``, ``.BMP``, ``.JPG``:
images through :func:`cai.io.list_images`, masks through :func:`cai.io.existing_file`). Readers check that
files exist, not what they hold (decoding is :mod:`cai.io`'s job); KSDD2 is the exception because its
normal/defect split *is* the content of its ground-truth masks.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from cai.data.types import NORMAL, CategoryData, TestItem
from cai.errors import ConfigError, DatasetError
from cai.io import existing_file, list_images, read_mask


def _preview(paths: list[Path], n: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:n])
    return shown + (f" (and {len(paths) - n} more)" if len(paths) > n else "")


class BaseReader:
    """Shared configuration, category checks and error construction of every reader."""

    layout: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        root: str | Path,
        categories: Iterable[str] = (),
        textures: Iterable[str] = (),
        download: str = "",
    ) -> None:
        self.name = str(name)
        self.root = Path(str(root)).expanduser()
        self._categories = [str(c) for c in (categories or ())]
        self.textures = frozenset(str(t) for t in (textures or ()))
        self.download = str(download or "")
        if self._categories and not self.textures <= set(self._categories):
            extra = sorted(self.textures - set(self._categories))
            raise ConfigError(
                f"Dataset {self.name!r}: textures {extra} are not among its categories.",
                where=f"dataset {self.name}",
                fix="Every entry of `textures` must also be listed in `categories`.",
            )

    def categories(self) -> list[str]:
        """The categories named in the config, in config order."""
        return list(self._categories)

    def is_texture(self, category: str) -> bool:
        return category in self.textures

    def error(self, what: str, where: str | Path, fix: str | None = None) -> DatasetError:
        """A :class:`DatasetError` that also states the expected layout and the download hint."""
        hint = f"Expected layout: {self.layout}."
        if self.download:
            hint += f" Get the dataset from: {self.download}"
        return DatasetError(what, where=where, fix=f"{fix} {hint}" if fix else hint)

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise self.error(f"The {self.name} dataset root folder does not exist.", self.root)

    def check_category(self, category: str) -> None:
        valid = self.categories()
        if category not in valid:
            raise self.error(
                f"Unknown {self.name} category {category!r}.",
                self.root,
                fix=f"Choose one of: {', '.join(valid) if valid else '(none configured)'}.",
            )

    def category_data(self, category: str, train: list[Path], test: list[TestItem]) -> CategoryData:
        return CategoryData(
            dataset=self.name,
            category=category,
            root=self.root,
            is_texture=self.is_texture(category),
            train=tuple(train),
            test=tuple(test),
        )


class MVTecReader(BaseReader):
    """MVTec AD: ``<cat>/train/good``, ``<cat>/test/<defect>``, ``<cat>/ground_truth/<defect>/*_mask.png``.

    ``test/good`` holds normal test images (no mask); every other ``test/<defect>`` image needs its mask.
    Test items are ordered by defect folder name, then by file name.
    """

    layout: ClassVar[str] = (
        "<root>/<category>/train/good/*.png, <root>/<category>/test/<defect>/*.png "
        "(normal test images in test/good), <root>/<category>/ground_truth/<defect>/<stem>_mask.png"
    )
    mask_suffix: ClassVar[str] = "_mask"
    masks_required: bool = True  # FolderReader(masks="optional"): a defect without its mask has mask=None
    normal_dir: ClassVar[str] = NORMAL  # the folder name of normal images under train/ and test/

    def mask_candidates(self, cat_dir: Path, defect: str, image: Path) -> list[Path]:
        """Where the mask of an anomalous test image may be, in order of preference (first one found wins)."""
        return [cat_dir / "ground_truth" / defect / f"{image.stem}{self.mask_suffix}.png"]

    def load(self, category: str) -> CategoryData:
        self.check_root()
        self.check_category(category)
        cat_dir = self.root / category
        if not cat_dir.is_dir():
            raise self.error(f"Category folder for {category!r} is missing.", cat_dir)
        train_dir = cat_dir / "train" / self.normal_dir
        train = list_images(train_dir)
        if not train:
            raise self.error(f"No normal training images for {category!r} (no images there).", train_dir)
        test_dir = cat_dir / "test"
        if not test_dir.is_dir():
            raise self.error(f"Test folder for {category!r} is missing.", test_dir)
        defects = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        test: list[TestItem] = []
        missing: list[list[Path]] = []  # per image without a mask: every place it was looked for
        listings: dict = {}  # ground-truth folder listings: a mask's suffix matches in any case (.PNG)
        for defect in defects:
            for image in list_images(test_dir / defect):
                if defect == self.normal_dir:
                    test.append(TestItem(image=image, defect=NORMAL))
                    continue
                candidates = self.mask_candidates(cat_dir, defect, image)
                mask = next((found for m in candidates if (found := existing_file(m, listings)) is not None), None)
                if mask is None:
                    if not self.masks_required:  # no pixel ground truth: image metrics only
                        test.append(TestItem(image=image, defect=defect))
                        continue
                    missing.append(candidates)
                test.append(TestItem(image=image, defect=defect, mask=mask or candidates[0]))
        if missing:
            others = ", ".join(m.name for m in missing[0][1:])
            raise self.error(
                f"{len(missing)} anomalous test image(s) of {category!r} lack a mask: "
                f"{_preview([c[0] for c in missing])}" + (f" (also looked for {others})" if others else ""),
                missing[0][0],
            )
        if not test:
            raise self.error(f"No test images for {category!r}.", test_dir)
        return self.category_data(category, train, test)


class FolderReader(MVTecReader):
    """Any dataset in the MVTec AD layout; with an empty ``categories`` list they are found on disk.

    A discovered category is a sub-folder of ``root`` that has ``train/good``. ``masks``: ``required``
    (every test defect needs ``ground_truth/<defect>/<stem>_mask.png``) or ``optional`` (a defect
    without one is a :class:`TestItem` with ``mask=None``: anomalous, no pixel ground truth; the pipeline
    then skips the pixel metrics and says so).
    """

    MASK_MODES: ClassVar[tuple[str, ...]] = ("required", "optional")

    def __init__(self, *args, masks: str = "required", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if masks not in self.MASK_MODES:
            raise ConfigError(f"dataset.masks must be one of {list(self.MASK_MODES)}, got {masks!r}.",
                              where=f"dataset {self.name}",
                              fix="Use dataset.masks=optional for test defects without ground-truth masks.")
        self.masks_required = masks == "required"

    def categories(self) -> list[str]:
        if self._categories:
            return list(self._categories)
        self.check_root()
        return sorted(
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and not d.name.startswith(".") and (d / "train" / self.normal_dir).is_dir()
        )


class VisAReader(BaseReader):
    """VisA through its official one-class split ``split_csv/1cls.csv``.

    Columns ``object,split,label,image,mask``; paths are relative to ``root``; ``label`` is ``normal``
    or ``anomaly``. Train rows labelled anomaly are not normal and are dropped; anomalous test images get
    the defect name ``anomaly`` (VisA's split names no defect types).
    """

    layout: ClassVar[str] = (
        "<root>/split_csv/1cls.csv (columns object,split,label,image,mask; paths relative to <root>, "
        "e.g. <root>/candle/Data/Images/Normal/0000.JPG and <root>/candle/Data/Masks/Anomaly/000.png)"
    )
    csv_path: ClassVar[Path] = Path("split_csv") / "1cls.csv"
    columns: ClassVar[tuple[str, ...]] = ("object", "split", "label", "image", "mask")
    anomaly_defect: ClassVar[str] = "anomaly"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rows: list[tuple[int, dict[str, str]]] | None = None

    def _read_csv(self) -> list[tuple[int, dict[str, str]]]:
        if self._rows is not None:
            return self._rows
        self.check_root()
        path = self.root / self.csv_path
        if not path.is_file():
            raise self.error("VisA split file is missing.", path)
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = [h.strip() for h in (reader.fieldnames or [])]
                if not set(self.columns) <= set(header):
                    raise self.error(
                        f"VisA split file has columns {header}, expected {list(self.columns)}.", path
                    )
                reader.fieldnames = header
                rows = [
                    (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k in self.columns})
                    for row in reader
                ]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise self.error(f"VisA split file cannot be parsed as CSV ({exc}).", path) from None
        self._rows = rows
        return rows

    def load(self, category: str) -> CategoryData:
        self.check_root()
        self.check_category(category)
        csv_file = self.root / self.csv_path
        train: list[Path] = []
        test: list[TestItem] = []
        missing: list[Path] = []
        rows = [(n, r) for n, r in self._read_csv() if r["object"] == category]
        if not rows:
            raise self.error(f"The VisA split file has no rows for category {category!r}.", csv_file)
        for line, row in rows:
            split, label = row["split"], row["label"]
            if split not in ("train", "test") or label not in ("normal", "anomaly") or not row["image"]:
                raise self.error(
                    f"Malformed row at line {line}: split={split!r} (train/test), label={label!r} "
                    f"(normal/anomaly), image={row['image']!r} (a path).",
                    csv_file,
                )
            image = self.root / row["image"]
            if not image.is_file():
                missing.append(image)
            if label == "normal" and split == "train":
                train.append(image)
            elif label == "normal":
                test.append(TestItem(image, NORMAL))
            elif split == "test":
                if not row["mask"]:
                    raise self.error(f"Anomalous test image at line {line} has no mask path.", csv_file)
                mask = self.root / row["mask"]
                if not mask.is_file():
                    missing.append(mask)
                test.append(TestItem(image, self.anomaly_defect, mask))
        if missing:
            raise self.error(
                f"{len(missing)} file(s) listed in the VisA split for {category!r} are missing: "
                f"{_preview(missing)}",
                missing[0],
            )
        if not train:
            raise self.error(f"The VisA split has no normal training images for {category!r}.", csv_file)
        if not test:
            raise self.error(f"The VisA split has no test images for {category!r}.", csv_file)
        test.sort(key=lambda t: (t.defect, str(t.image)))
        return self.category_data(category, sorted(train), test)


class KSDD2Reader(BaseReader):
    """KolektorSDD2: ``train/`` and ``test/`` folders of ``<stem>.png`` with ``<stem>_GT.png`` masks.

    The dataset has one category (configured, e.g. ``ksdd2``). Its split into normal and defective images
    lives only in the masks, so this reader decodes every mask once (and remembers the result): train
    images with a non-empty mask are labelled defects, not normals, and are dropped; test images with an
    empty mask are ``good`` (mask None), the others are defect ``defect``.
    """

    layout: ClassVar[str] = "<root>/train/<stem>.png + <stem>_GT.png, <root>/test/<stem>.png + <stem>_GT.png"
    gt_suffix: ClassVar[str] = "_GT"
    defect: ClassVar[str] = "defect"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache: dict[str, CategoryData] = {}

    def _scan(self, split: str) -> list[tuple[Path, Path, bool]]:
        folder = self.root / split
        if not folder.is_dir():
            raise self.error(f"KSDD2 {split} folder is missing.", folder)
        images = [p for p in list_images(folder) if not p.stem.endswith(self.gt_suffix)]
        if not images:
            raise self.error(f"KSDD2 {split} folder holds no images.", folder)
        expected = [p.with_name(f"{p.stem}{self.gt_suffix}.png") for p in images]
        listings: dict = {}
        masks = [existing_file(m, listings) or m for m in expected]  # the suffix in any case (.PNG)
        missing = [m for m in masks if not m.is_file()]
        if missing:
            raise self.error(
                f"{len(missing)} KSDD2 {split} image(s) have no ground-truth mask: {_preview(missing)}",
                missing[0],
            )
        return [(image, mask, bool(read_mask(mask).any())) for image, mask in zip(images, masks, strict=True)]

    def load(self, category: str) -> CategoryData:
        self.check_root()
        self.check_category(category)
        if category not in self._cache:
            train = [image for image, _, defective in self._scan("train") if not defective]
            if not train:
                raise self.error("KSDD2 has no defect-free training images.", self.root / "train")
            test = [
                TestItem(image, self.defect, mask) if defective else TestItem(image, NORMAL)
                for image, mask, defective in self._scan("test")
            ]
            test.sort(key=lambda t: (t.defect, str(t.image)))
            self._cache[category] = self.category_data(category, train, test)
        return self._cache[category]


class BTADReader(MVTecReader):
    """BTAD (beanTech AD): ``<NN>/train/ok``, ``<NN>/test/{ok,ko}``, ``<NN>/ground_truth/ko/<stem>.<ext>``.

    As MVTec AD, but normal images live in ``ok`` folders and a mask has its image's stem and no suffix.
    Extensions differ per category in the published archive (images ``.bmp`` or ``.png``; masks ``.bmp`` in
    category 03, ``.png`` in the others; copies converted by other tools may be all ``.png``), so a mask is
    looked up as ``<stem>`` + each of ``mask_extensions`` in turn. Normal test images become defect
    ``good`` (the project's normal label), every other test folder (``ko``) a defect of that name.
    """

    layout: ClassVar[str] = (
        "<root>/<NN>/train/ok/*.bmp|png, <root>/<NN>/test/ok/*.bmp|png (normal), "
        "<root>/<NN>/test/ko/*.bmp|png (anomalous), <root>/<NN>/ground_truth/ko/<stem>.png|bmp"
    )
    normal_dir: ClassVar[str] = "ok"

    def __init__(self, *args, mask_extensions: Iterable[str] = (".png", ".bmp"), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        exts = [str(e) if str(e).startswith(".") else f".{e}" for e in (mask_extensions or ())]
        if not exts:
            raise ConfigError(
                f"Dataset {self.name!r}: mask_extensions is empty.",
                where=f"dataset {self.name}",
                fix="List the mask file extensions to look for, e.g. mask_extensions: [.png, .bmp].",
            )
        self.mask_extensions = tuple(exts)

    def mask_candidates(self, cat_dir: Path, defect: str, image: Path) -> list[Path]:
        return [cat_dir / "ground_truth" / defect / f"{image.stem}{ext}" for ext in self.mask_extensions]
