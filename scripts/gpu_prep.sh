#!/usr/bin/env bash
# Prepare <repo_root>/.gpu/ for scripts/gpu_checks.sh on a GPU machine that has no network and gets only the
# repo checkout (no ../shared): a small subset of the real-data fixtures and the wheels the machine lacks.
#
#   bash scripts/gpu_prep.sh /path/to/checkout        (then carry ".gpu" to the GPU machine)
#
# What it writes (~25 MiB; the checkout's tracked files travel too, 64 MiB in all):
#   .gpu/data/bsdata_ad/ball_screw/   N_TRAIN train/good + N_TEST_GOOD test/good + N_TEST_BAD test/pitting images
#                                     with their ground_truth masks, same layout (conf/dataset/bsdata.yaml reads
#                                     ${paths.shared_data_dir}/bsdata_ad), picked evenly over the sorted names
#   .gpu/data/daad_mini/              N_BANK items per anomaly class with manifest.csv (conf/daad/daad_mini.yaml);
#                                     source bsdata is left out: the leakage rule drops it for a bsdata target
#   .gpu/data/README.md               the fixtures' README (their licences must travel with any copy)
#   .gpu/wheels/                      hydra-core, omegaconf (PyPI wheels, versions pinned in pyproject.toml) and
#                                     antlr4-python3-runtime (sdist only on PyPI: built into a py3-none-any wheel)
# and adds /.gpu/ to the checkout's .git/info/exclude so that it is ignored (it travels only when carried).
# Env: SHARED (default <repo_root>/../shared/data), PY (python for the subset; default python3), PIP (pip for the
# downloads; default <repo_root>/.venv/bin/pip), N_TRAIN=60 N_TEST_GOOD=20 N_TEST_BAD=40 N_BANK=30.
set -euo pipefail

ROOT=$(cd "${1:?usage: gpu_prep.sh <repo_root>}" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/data}
PY=${PY:-python3}
PIP=${PIP:-$ROOT/.venv/bin/pip}
DEST=$ROOT/.gpu
export N_TRAIN=${N_TRAIN:-60} N_TEST_GOOD=${N_TEST_GOOD:-20} N_TEST_BAD=${N_TEST_BAD:-40} N_BANK=${N_BANK:-30}

[ -d "$SHARED/bsdata_ad/ball_screw" ] && [ -f "$SHARED/daad_mini/manifest.csv" ] || {
  echo "error: no real-data fixtures at $SHARED (set SHARED=<folder with bsdata_ad and daad_mini>)" >&2; exit 2; }
GIT_COMMON=$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir)
mkdir -p "$GIT_COMMON/info"
grep -qxF '/.gpu/' "$GIT_COMMON/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$GIT_COMMON/info/exclude"

rm -rf "$DEST/data" "$DEST/wheels"
mkdir -p "$DEST/data" "$DEST/wheels"
cp "$SHARED/README.md" "$DEST/data/README.md"

"$PY" - "$SHARED" "$DEST/data" <<'EOF'
"""Copy an evenly spread, sorted (deterministic) subset of bsdata_ad/ball_screw and daad_mini."""
import csv
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

shared, dest = Path(sys.argv[1]), Path(sys.argv[2])


def spread(items, n, key=None):
    """n items evenly spaced over the sorted list (all of them when there are fewer)."""
    items = sorted(items, key=key)
    if n >= len(items):
        return items
    return [items[(i * len(items)) // n] for i in range(n)]


def copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


cat = shared / "bsdata_ad" / "ball_screw"
out = dest / "bsdata_ad" / "ball_screw"
picks = {"train/good": int(os.environ["N_TRAIN"]), "test/good": int(os.environ["N_TEST_GOOD"]),
         "test/pitting": int(os.environ["N_TEST_BAD"])}
for sub, n in picks.items():
    for img in spread((cat / sub).glob("*.png"), n):
        copy(img, out / sub / img.name)
        if sub == "test/pitting":
            mask = cat / "ground_truth" / "pitting" / f"{img.stem}_mask.png"
            copy(mask, out / "ground_truth" / "pitting" / mask.name)
    print(f"bsdata_ad/ball_screw/{sub}: {len(list((out / sub).glob('*.png')))} images")

bank = shared / "daad_mini"
with open(bank / "manifest.csv", newline="") as f:
    reader = csv.DictReader(f)
    fields, rows = reader.fieldnames, list(reader)
by_class = defaultdict(list)
for row in rows:
    if row["source"] != "bsdata":  # the leakage rule drops these for the bsdata target anyway
        by_class[row["anomaly_class"]].append(row)
kept = []
for cls in sorted(by_class):
    chosen = spread(by_class[cls], int(os.environ["N_BANK"]), key=lambda r: r["image"])
    kept += chosen
    print(f"daad_mini/{cls}: {len(chosen)} of {len(by_class[cls])} items")
for row in kept:
    copy(bank / row["image"], dest / "daad_mini" / row["image"])
    copy(bank / row["mask"], dest / "daad_mini" / row["mask"])
with open(dest / "daad_mini" / "manifest.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept)
EOF

# Wheels the GPU machine lacks (its image has torch, numpy, opencv, scikit-image, scipy, ... but no Hydra).
pin() { grep -oE "\"$1==[^\"]+\"" "$HERE/pyproject.toml" | tr -d '"'; }
HYDRA=$(pin hydra-core); OMEGACONF=$(pin omegaconf)
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$DEST/wheels" "$HYDRA" "$OMEGACONF"
ANTLR=$("$PY" - "$DEST/wheels" <<'EOF'
import sys
import zipfile
from pathlib import Path

# the antlr4 runtime omegaconf itself requires (its METADATA: antlr4-python3-runtime==4.9.*)
wheel = next(Path(sys.argv[1]).glob("omegaconf-*.whl"))
meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines():
    if line.startswith("Requires-Dist: antlr4-python3-runtime"):
        print("antlr4-python3-runtime" + line.split("antlr4-python3-runtime")[1].split(";")[0].strip().strip("()"))
EOF
)
SDIST=$(mktemp -d)
"$PIP" download -q --no-deps --no-binary=:all: -d "$SDIST" "$ANTLR"
"$PIP" wheel -q --no-deps -w "$DEST/wheels" "$SDIST"/antlr4*
rm -rf "$SDIST"
ls "$DEST/wheels"

echo "size of .gpu: $(du -sh "$DEST" | cut -f1) (data $(du -sh "$DEST/data" | cut -f1), wheels $(du -sh "$DEST/wheels" | cut -f1))"
TRACKED=$(cd "$ROOT" && git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
UNTRACKED=$(cd "$ROOT" && git ls-files -z --others --exclude-standard | du -cb --files0-from=- 2>/dev/null \
  | tail -1 | cut -f1)
GPU=$(du -sb "$DEST" | cut -f1)
echo "travels: tracked $((TRACKED / 1048576)) MiB + untracked-not-ignored $((${UNTRACKED:-0} / 1048576)) MiB" \
     "+ .gpu $((GPU / 1048576)) MiB = $(((TRACKED + ${UNTRACKED:-0} + GPU) / 1048576)) MiB (limit 64 MiB)"
