"""Every conf/dataset/*.yaml: consistent keys, and its reader instantiates and loads through Hydra."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
from omegaconf import OmegaConf

from cai.data.demo import DemoReader
from cai.data.readers import BTADReader, FolderReader, KSDD2Reader, MVTecReader, VisAReader
from cai.errors import DatasetError
from tests.conftest import REPO_ROOT
from tests.data.fixtures import MPDD_DEFECTS, make_btad, make_ksdd2, make_mpdd, make_mvtec, make_visa

CONF = REPO_ROOT / "conf" / "dataset"
EXPECTED = {
    "mvtec": (MVTecReader, 15, 5),
    "visa": (VisAReader, 12, 0),
    "ksdd2": (KSDD2Reader, 1, 1),
    "bsdata": (FolderReader, 1, 0),
    "mpdd": (MVTecReader, 6, 0),
    "btad": (BTADReader, 3, 1),
    "demo": (DemoReader, 4, 3),
}


def compose(name: str, tmp_path: Path, shared: Path | None = None):
    paths = {
        "data_dir": str(tmp_path / "data"),
        "cache_dir": str(tmp_path / "cache"),
        "shared_data_dir": str(shared or tmp_path / "shared"),
    }
    return OmegaConf.create({"paths": paths, "dataset": OmegaConf.load(CONF / f"{name}.yaml")})


def test_every_dataset_yaml_is_tested() -> None:
    assert {p.stem for p in CONF.glob("*.yaml")} == set(EXPECTED) | {"folder"}


def test_folder_yaml_reads_your_own_mvtec_layout(tmp_path: Path) -> None:
    """README's `dataset=folder dataset.reader.root=...`: categories are found on disk; root is required."""
    cfg = compose("folder", tmp_path)
    assert OmegaConf.is_missing(cfg.dataset.reader, "root")
    make_mvtec(tmp_path / "mine", categories=("bottle", "carpet"))
    cfg.dataset.reader.root = str(tmp_path / "mine")
    reader = hydra.utils.instantiate(cfg.dataset.reader)
    assert type(reader) is FolderReader and reader.categories() == ["bottle", "carpet"]
    assert len(reader.load("bottle").anomalies) > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dataset_yaml_shape(name: str, tmp_path: Path) -> None:
    cls, n_categories, n_textures = EXPECTED[name]
    ds = compose(name, tmp_path).dataset
    assert ds.name == name and ds.image_size == 256
    assert len(ds.categories) == n_categories == len(set(ds.categories))
    assert len(ds.textures) == n_textures and set(ds.textures) <= set(ds.categories)
    assert ds.category in ds.categories
    assert list(ds.leakage_sources) == ([] if name == "demo" else [name])
    reader = hydra.utils.instantiate(ds.reader)
    assert type(reader) is cls
    assert reader.name == name and reader.categories() == list(ds.categories)
    assert reader.textures == set(ds.textures)
    assert reader.download.strip()
    assert str(reader.root).startswith(str(tmp_path))


def test_mvtec_yaml_root_loads_a_tree(tmp_path: Path) -> None:
    cfg = compose("mvtec", tmp_path)
    make_mvtec(tmp_path / "data" / "mvtec_anomaly_detection", categories=("bottle", "carpet"))
    reader = hydra.utils.instantiate(cfg.dataset.reader)
    assert len(reader.load("bottle").train) == 3 and reader.load("carpet").is_texture


def test_visa_yaml_root_loads_a_tree(tmp_path: Path) -> None:
    cfg = compose("visa", tmp_path)
    make_visa(tmp_path / "data" / "visa", categories=("candle",))
    assert len(hydra.utils.instantiate(cfg.dataset.reader).load("candle").anomalies) == 2


def test_ksdd2_yaml_root_loads_a_tree(tmp_path: Path) -> None:
    cfg = compose("ksdd2", tmp_path)
    make_ksdd2(tmp_path / "data" / "ksdd2")
    data = hydra.utils.instantiate(cfg.dataset.reader).load("ksdd2")
    assert data.is_texture and len(data.train) == 3


def test_missing_dataset_error_carries_the_yaml_download_hint(tmp_path: Path) -> None:
    cfg = compose("mvtec", tmp_path)
    with pytest.raises(DatasetError) as exc:
        hydra.utils.instantiate(cfg.dataset.reader).load("bottle")
    message = str(exc.value)
    assert "mvtec-ad" in message and str(tmp_path / "data" / "mvtec_anomaly_detection") in message


def test_mpdd_yaml_root_loads_a_tree(tmp_path: Path) -> None:
    cfg = compose("mpdd", tmp_path)
    assert list(cfg.dataset.categories) == list(MPDD_DEFECTS)
    make_mpdd(tmp_path / "data" / "mpdd", categories=("tubes", "bracket_white"))
    reader = hydra.utils.instantiate(cfg.dataset.reader)
    assert {t.defect for t in reader.load("bracket_white").anomalies} == {"defective_painting", "scratches"}
    assert len(reader.load("tubes").anomalies) == 1


def test_btad_yaml_root_loads_a_tree(tmp_path: Path) -> None:
    """Category names stay the strings "01".."03" (not YAML integers) and each category's extensions read."""
    cfg = compose("btad", tmp_path)
    assert list(cfg.dataset.categories) == ["01", "02", "03"] and cfg.dataset.category == "01"
    make_btad(tmp_path / "data" / "btad")
    reader = hydra.utils.instantiate(cfg.dataset.reader)
    loaded = {cat: reader.load(cat) for cat in ("01", "02", "03")}
    assert [d.is_texture for d in loaded.values()] == [False, True, False]
    assert [{t.mask.suffix for t in d.anomalies} for d in loaded.values()] == [{".png"}, {".png"}, {".bmp"}]


@pytest.mark.parametrize(("name", "page"), [("mpdd", "https://github.com/stepanje/MPDD"),
                                             ("btad", "https://avires.dimi.uniud.it/papers/btad/btad.zip")])
def test_missing_new_dataset_names_its_download_page(name: str, page: str, tmp_path: Path) -> None:
    cfg = compose(name, tmp_path)
    with pytest.raises(DatasetError) as exc:
        hydra.utils.instantiate(cfg.dataset.reader).load(cfg.dataset.category)
    message = str(exc.value)
    assert page in message and str(tmp_path / "data" / name) in message and "Expected layout" in message


@pytest.mark.shared_data
def test_bsdata_yaml_loads_the_shared_fixture(tmp_path: Path, shared_data: Path) -> None:
    cfg = compose("bsdata", tmp_path, shared=shared_data)
    data = hydra.utils.instantiate(cfg.dataset.reader).load(cfg.dataset.category)
    assert (len(data.train), len(data.test), len(data.anomalies)) == (200, 227, 167)


def test_demo_yaml_generates_small_override(tmp_path: Path) -> None:
    cfg = compose("demo", tmp_path)
    cfg.dataset.image_size = 48
    cfg.dataset.reader.n_train = 2
    cfg.dataset.reader.n_test_good = 1
    cfg.dataset.reader.n_test_anomalous = 3
    data = hydra.utils.instantiate(cfg.dataset.reader).load("coin")
    assert data.root == tmp_path / "cache" / "demo_data"
    assert (len(data.train), len(data.anomalies)) == (2, 3)
