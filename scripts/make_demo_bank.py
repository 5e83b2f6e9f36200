"""Rebuild the tiny anomaly bank that ships in ``cai/data/demo_bank`` (``conf/daad/demo_bank.yaml``).

    python scripts/make_demo_bank.py --src ../shared/data/daad_mini --out cai/data/demo_bank

It takes the BSData pitting crops of a DAAD-style folder bank (``<src>/manifest.csv`` rows with
``source == bsdata``), keeps at most one crop per source image, takes ``--max-items`` of those evenly spaced
over the name-sorted list (deterministic, and spread over BSData's wear sequences), downsizes each crop
to ``--size`` px (image: area interpolation; mask: area, then > 0.5), drops crops whose mask then covers
less than ``--min-area`` of the image, and writes ``pits/<name>.png`` + ``pits/<name>_mask.png`` and a
``manifest.csv`` in the DAAD manifest format.
BSData is CC BY-SA 4.0, so the copies stay under that licence (see ``ATTRIBUTION.md`` beside them).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cai.io import read_image, read_mask  # noqa: E402

LICENSE_NOTE = "BSData: CC BY-SA 4.0 (downsized crop)"


def main(argv: list[str] | None = None) -> int:
    """Select, downsize and write the demo bank; print its size."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="a DAAD-style folder bank with manifest.csv")
    ap.add_argument("--out", type=Path, default=Path("cai/data/demo_bank"))
    ap.add_argument("--size", type=int, default=192, help="side of the square output crops (px)")
    ap.add_argument("--max-items", type=int, default=40)
    ap.add_argument("--min-area", type=float, default=0.002, help="smallest mask fraction kept")
    args = ap.parse_args(argv)

    with (args.src / "manifest.csv").open(newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["source"] == "bsdata"), key=lambda r: r["image"])
    seen: set[str] = set()
    chosen = []
    for r in rows:  # one crop per BSData image: <source>_<stem>_c<k>.png
        origin = Path(r["image"]).stem.rsplit("_c", 1)[0]
        if origin not in seen:
            seen.add(origin)
            chosen.append(r)
    if len(chosen) > args.max_items:
        picks = np.linspace(0, len(chosen) - 1, args.max_items).round().astype(int)
        chosen = [chosen[i] for i in picks]

    (args.out / "pits").mkdir(parents=True, exist_ok=True)
    out_rows = []
    for r in chosen:
        if len(out_rows) >= args.max_items:
            break
        image = read_image(args.src / r["image"])
        mask = read_mask(args.src / r["mask"], shape=image.shape[:2])
        size = (args.size, args.size)
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
        frac = float(small_mask.mean())
        if frac < args.min_area:
            continue
        name = Path(r["image"]).stem
        cv2.imwrite(str(args.out / "pits" / f"{name}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_PNG_COMPRESSION, 9])
        cv2.imwrite(str(args.out / "pits" / f"{name}_mask.png"), small_mask.astype(np.uint8) * 255,
                    [cv2.IMWRITE_PNG_COMPRESSION, 9])
        out_rows.append([f"pits/{name}.png", f"pits/{name}_mask.png", "pits", "bsdata", LICENSE_NOTE,
                         args.size, args.size, f"{frac:.6f}"])
    with (args.out / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "mask", "anomaly_class", "source", "license_note", "height", "width",
                    "mask_area_frac"])
        w.writerows(out_rows)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(out_rows)} items from {len(chosen)} source images -> {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
