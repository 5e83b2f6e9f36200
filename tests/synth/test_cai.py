"""CAI-N / CAI-M (cai/synth/cai.py): STM, MAS quotas, ILS, PE, Eq. 4 labels, ablations, determinism."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from cai.bank import AnomalyBank, BankItem
from cai.errors import ConfigError
from cai.synth.base import SynthesisContext, check_output
from cai.synth.cai import (
    SCALES,
    CAISynthesizer,
    allowed_scales,
    apportion,
    label_mask,
    scale_type,
    source_target_ratio,
)

from .conftest import REPO, TARGET, compose_cai, disc, make_cai, target_image, write_bank

RANGES = {"large": (0.7, 1.0), "medium": (0.3, 0.7), "small": (0.1, 0.3)}
FULL = np.ones((TARGET, TARGET), bool)


def inside(box: tuple[int, int, int, int], size: int = TARGET) -> bool:
    top, left, h, w = box
    return min(top, left) >= 0 and top + h <= size and left + w <= size


def counts(info) -> dict[str, int]:
    return {s: sum(i.scale == s for i in info) for s in SCALES}


# ----------------------------------------------------------------------------- STM (Eq. 1)
def test_source_target_ratio_uses_longest_sides_of_the_boxes() -> None:
    anomaly = np.zeros((300, 300), bool)
    anomaly[10:40, 100:170] = True  # box 30 x 70 -> s_a = 70
    anomaly[20, 120] = False  # holes do not matter, only the box
    fg = np.zeros((256, 256), bool)
    fg[50:150, 100:150] = True  # box 100 x 50 -> s_f = 100
    assert source_target_ratio(anomaly, fg) == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("ratio", "expected", "allowed"),
    [
        (0.0999, "trivial", ()),
        (0.1, "small", ("small",)),
        (0.2999, "small", ("small",)),
        (0.3, "medium", ("medium", "small")),
        (0.6999, "medium", ("medium", "small")),
        (0.7, "large", ("large", "medium", "small")),
        (3.5, "large", ("large", "medium", "small")),
    ],
)
def test_scale_typing(ratio: float, expected: str, allowed: tuple[str, ...]) -> None:
    assert scale_type(ratio, RANGES, 0.1) == expected
    assert allowed_scales(ratio, RANGES, 0.1) == allowed


# ----------------------------------------------------------------------------- MAS quotas
def test_apportion_examples() -> None:
    q = {"large": 4, "medium": 3, "small": 3}
    assert apportion(q, 10) == q
    assert apportion(q, 20) == {"large": 8, "medium": 6, "small": 6}
    assert apportion(q, 5) == {"large": 2, "medium": 2, "small": 1}  # tie -> larger scale
    assert apportion(q, 1) == {"large": 1, "medium": 0, "small": 0}


@given(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9), st.integers(0, 200))
def test_apportion_sums_to_n_and_is_proportional(nl: int, nm: int, ns: int, n: int) -> None:
    if nl + nm + ns == 0:
        return
    q = {"large": nl, "medium": nm, "small": ns}
    out = apportion(q, n)
    assert sum(out.values()) == n
    for s in SCALES:
        assert abs(out[s] - n * q[s] / (nl + nm + ns)) < 1.0


def test_generate_returns_exact_quotas_and_prefers_the_largest_open_scale(bank_manifest: Path) -> None:
    syn = make_cai(bank_manifest)
    rng = np.random.default_rng(1)
    image = target_image()
    for _ in range(15):
        info = syn.generate_with_info(image, FULL, rng, 10)
        assert counts(info) == {"large": 4, "medium": 3, "small": 3}
        assert syn.last_scales == [i.scale for i in info]
        remaining = {"large": 4, "medium": 3, "small": 3}
        for inj in info:  # replay Algorithm 1's choice for each output, in order
            allowed = allowed_scales(inj.source_ratio, RANGES, 0.1)
            assert inj.scale == next(s for s in allowed if remaining[s] > 0)
            remaining[inj.scale] -= 1
            lo, hi = RANGES[inj.scale]
            assert lo <= inj.target_ratio <= hi
            assert inj.target_ratio == round(inj.target_ratio, 1)  # official one-decimal rounding
            assert inj.ratio == pytest.approx(inj.target_ratio, abs=3 / TARGET)  # realised R'
            assert inj.source_ratio >= 0.1  # trivial patterns are never used
    info = syn.generate_with_info(image, FULL, rng, 20)
    assert counts(info) == {"large": 8, "medium": 6, "small": 6}


def test_other_scale_configs(bank_manifest: Path) -> None:
    syn = make_cai(bank_manifest, ["scale=small"])
    info = syn.generate_with_info(target_image(), FULL, np.random.default_rng(0), 10)
    assert counts(info) == {"large": 2, "medium": 2, "small": 6}


def test_quota_without_large_patterns_moves_to_the_next_scale(tmp_path: Path, caplog) -> None:
    manifest = write_bank(tmp_path / "b", [("m", "stain", "dagm", 60), ("s", "crack", "dagm", 26)])
    syn = make_cai(manifest, ["synthesizer.params.max_attempts=30"])
    with caplog.at_level(logging.WARNING, logger="cai.synth.cai"):
        info = syn.generate_with_info(target_image(), FULL, np.random.default_rng(0), 10)
    assert counts(info) == {"large": 0, "medium": 7, "small": 3}
    assert "moved to the next scale" in caplog.text


def test_call_draws_scale_in_proportion_to_quotas(bank_manifest: Path) -> None:
    syn = make_cai(bank_manifest)
    rng = np.random.default_rng(0)
    image = target_image()
    seen = []
    for _ in range(40):
        out, mask = syn(image, FULL, rng)
        check_output(image, out, mask)
        seen += syn.last_scales
    assert set(seen) == set(SCALES)


# ----------------------------------------------------------------------------- ILS (Eq. 2)
def test_every_location_satisfies_eq2(bank_manifest: Path) -> None:
    # context region: in the official tight box these fixture patterns are too small (10-30 px) for a
    # label at the small scale on this 100 px foreground, and Algorithm 1 would leave outputs normal
    syn = make_cai(bank_manifest, ["synthesizer=cai_n_context"])
    rng = np.random.default_rng(2)
    image = target_image()
    fg = disc(radius=50, centre=(70, 60))
    for _ in range(6):
        for inj in syn.generate_with_info(image, fg, rng, 10):
            cy, cx = inj.location
            top, left, h, w = inj.box
            assert fg[cy, cx], "centre outside the foreground"
            assert inside(inj.box)
            assert (cy, cx) == (top + h // 2, left + w // 2)
            assert inj.ils in ("foreground", "shrunk")
            assert np.array_equal(inj.image[~fg], image[~fg])
            assert not (inj.mask & ~fg).any()


def test_ils_fallback_shrinks_then_goes_anywhere(tmp_path: Path) -> None:
    manifest = write_bank(tmp_path / "b", [("big", "crack", "dagm", 120)])
    syn = make_cai(manifest)
    fg = np.zeros((TARGET, TARGET), bool)
    fg[2:20, :] = True  # a strip along the top: large (tall) patterns fit nowhere, medium ones shrunk
    info = syn.generate_with_info(target_image(), fg, np.random.default_rng(0), 10)
    assert {"shrunk", "anywhere"} <= {i.ils for i in info}
    for inj in info:
        if inj.ils in ("foreground", "shrunk"):
            assert fg[inj.location]
        if inj.ils == "shrunk":
            assert inj.ratio < inj.target_ratio and inj.ratio >= RANGES[inj.scale][0] - 2 / TARGET
        top, left, h, w = inj.box
        assert inside(inj.box)
        assert inj.mask.any() and not (inj.mask & ~fg).any()


# ----------------------------------------------------------------------------- Eq. 4
def test_label_mask_threshold_is_strict_and_median_filtered() -> None:
    old = np.full((60, 60, 3), 100, np.uint8)
    new = old.copy()
    new[20:40, 20:40] = 107
    assert not label_mask(new, old, 7, 7).any()  # |diff| = 7 is not > T
    new[20:40, 20:40] = 108
    m = label_mask(new, old, 7, 7)
    assert m[23:37, 23:37].all() and not m[:20].any() and not m[:, :20].any()
    assert not label_mask(new, old, 8, 7).any()
    new[5, 5] = 200  # an isolated speck is removed by the 7x7 median
    assert not label_mask(new, old, 7, 7)[5, 5]


def test_label_threshold_config_changes_the_mask(bank_manifest: Path) -> None:
    image = target_image()
    low = make_cai(bank_manifest, ["ablation=no_pe"]).generate_with_info(
        image, FULL, np.random.default_rng(3), 10
    )
    high = make_cai(
        bank_manifest, ["ablation=no_pe", "synthesizer.params.label.threshold=40"]
    ).generate_with_info(image, FULL, np.random.default_rng(3), 10)
    # the dark bank anomalies differ from the target by far more than 40 grey levels: same draws
    assert [i.location for i in low] == [i.location for i in high]
    for a, b in zip(low, high, strict=True):
        assert np.array_equal(a.image, b.image)
        assert (b.mask <= a.mask).all() and a.mask.sum() > b.mask.sum()


def test_windowed_label_equals_full_image_label(bank_manifest: Path) -> None:
    syn = make_cai(bank_manifest, ["synthesizer=cai_m"])
    image = target_image()
    fg = disc(radius=55)
    for inj in syn.generate_with_info(image, fg, np.random.default_rng(4), 10):
        assert np.array_equal(inj.mask, label_mask(inj.image, image, 7, 7) & fg)


# ----------------------------------------------------------------------------- ablations
def _run(manifest: Path, overrides: list[str], fg: np.ndarray, seed: int = 5):
    return make_cai(manifest, overrides).generate_with_info(
        target_image(), fg, np.random.default_rng(seed), 10
    )


def test_ablation_pe_changes_only_the_blending(bank_manifest: Path) -> None:
    # context region, where PE labels every draw of this fixture bank, so both runs take the same draws
    ctx = "synthesizer=cai_n_context"
    full, no_pe = _run(bank_manifest, [ctx], FULL), _run(bank_manifest, [ctx, "ablation=no_pe"], FULL)
    key = lambda i: (i.item, i.scale, i.target_ratio, i.location, i.box)  # noqa: E731
    assert [key(i) for i in full] == [key(i) for i in no_pe]
    image = target_image()
    for a, b in zip(full, no_pe, strict=True):
        assert not np.array_equal(a.image, b.image)
        top, left, h, w = b.box
        outside = np.ones(image.shape[:2], bool)
        outside[top : top + h, left : left + w] = False
        assert np.array_equal(b.image[outside], image[outside])  # a paste touches only the box


def test_ablation_stm_draws_any_ratio_for_any_pattern(bank_manifest: Path) -> None:
    info = []
    syn = make_cai(bank_manifest, ["ablation=no_stm"])
    rng = np.random.default_rng(6)
    for _ in range(8):
        info += syn.generate_with_info(target_image(), FULL, rng, 10)
    ratios = np.array([i.target_ratio for i in info])
    assert ratios.min() >= 0.1 and ratios.max() <= 1.0
    assert any(i.source_ratio < 0.1 for i in info), "trivial patterns are used without STM"
    assert any(i.target_ratio > i.source_ratio for i in info), "patterns are enlarged past their scale"
    assert all(i.scale == scale_type(i.target_ratio, RANGES, 0.0) for i in info)
    stm = make_cai(bank_manifest).generate_with_info(target_image(), FULL, np.random.default_rng(6), 40)
    assert all(i.source_ratio >= 0.1 for i in stm)


def test_ablation_ils(bank_manifest: Path) -> None:
    # with a full foreground, ILS changes nothing
    a, b = _run(bank_manifest, [], FULL), _run(bank_manifest, ["ablation=no_ils"], FULL)
    assert all(
        np.array_equal(x.image, y.image) and x.location == y.location for x, y in zip(a, b, strict=True)
    )
    # with a partial foreground, locations leave it, but the box stays inside the image
    fg = np.zeros((TARGET, TARGET), bool)
    fg[:, : TARGET // 2] = True
    image = target_image()
    info = []
    syn = make_cai(bank_manifest, ["ablation=no_ils"])
    rng = np.random.default_rng(7)
    for _ in range(4):
        info += syn.generate_with_info(image, fg, rng, 10)
    assert any(not fg[i.location] for i in info)
    for inj in info:
        top, left, h, w = inj.box
        assert inside(inj.box)
        assert np.array_equal(inj.image[~fg], image[~fg]) and not (inj.mask & ~fg).any()


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("mode", ["cai_n", "cai_m"])
def test_output_contract_and_determinism(bank_manifest: Path, mode: str) -> None:
    image = target_image(1)
    fg = disc(radius=52)
    runs = [
        make_cai(bank_manifest, [f"synthesizer={mode}"]).generate(image, fg, np.random.default_rng(seed), 10)
        for seed in (11, 11, 12)
    ]
    for out, mask in runs[0]:
        check_output(image, out, mask)
        assert mask.any() and not (mask & ~fg).any()
        assert np.array_equal(out[~fg], image[~fg])
        assert (out != image).any(axis=2)[mask].mean() > 0.5
    for (o1, m1), (o2, m2) in zip(runs[0], runs[1], strict=True):
        assert o1.tobytes() == o2.tobytes() and m1.tobytes() == m2.tobytes()
    assert any(o1.tobytes() != o3.tobytes() for (o1, _), (o3, _) in zip(runs[0], runs[2], strict=True))


def test_modes_differ(bank_manifest: Path) -> None:
    n = _run(bank_manifest, ["synthesizer=cai_n"], FULL)
    m = _run(bank_manifest, ["synthesizer=cai_m"], FULL)
    assert [i.location for i in n] == [i.location for i in m]
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(n, m, strict=True))


def test_empty_foreground_falls_back_to_the_whole_image(bank_manifest: Path) -> None:
    info = make_cai(bank_manifest).generate_with_info(
        target_image(), np.zeros((TARGET, TARGET), bool), np.random.default_rng(0), 3
    )
    assert all(i.mask.any() for i in info)


# ----------------------------------------------------------------------------- bank + leakage
def test_prepare_applies_the_leakage_rule(bank_manifest: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cai.bank"):
        syn = make_cai(bank_manifest, leakage=["dagm"])
    assert "leakage rule dropped 2 of 4 items" in caplog.text
    assert {it.source for it in syn.bank.items} == {"btad"}
    info = syn.generate_with_info(target_image(), FULL, np.random.default_rng(0), 10)
    assert all(i.item.source == "btad" for i in info)


def test_prepare_keeps_the_bank_while_leakage_is_unchanged(bank_manifest: Path) -> None:
    syn = make_cai(bank_manifest, leakage=["dagm"])
    bank = syn.bank
    syn.prepare(SynthesisContext("test", "other_cat", False, TARGET, leakage_sources=("DAGM",)))
    assert syn.bank is bank
    syn.prepare(SynthesisContext("other", "cat", False, TARGET, leakage_sources=("btad",)))
    assert syn.bank is not bank and {it.source for it in syn.bank.items} == {"dagm"}


def test_prepare_filters_a_given_bank_instance(bank_manifest: Path) -> None:
    cfg = compose_cai([f"daad.manifest={bank_manifest}"])
    params = dict(cfg.synthesizer.params)
    bank = AnomalyBank.from_manifest(
        bank_manifest, source_group_of={"dagm": "existing_datasets", "btad": "online_search"}
    )
    params["bank"] = bank
    params.pop("_target_")
    syn = CAISynthesizer(**params)
    syn.prepare(SynthesisContext("d", "c", False, TARGET, leakage_sources=("btad",)))
    assert {it.source for it in syn.bank.items} == {"dagm"}


def test_unprepared_config_bank_is_a_clear_error(bank_manifest: Path) -> None:
    syn = instantiate(compose_cai([f"daad.manifest={bank_manifest}"]).synthesizer.params)
    with pytest.raises(ConfigError, match="prepare"):
        syn(target_image(), FULL, np.random.default_rng(0))


def test_bad_config_values_are_config_errors(bank_manifest: Path) -> None:
    cfg = compose_cai([f"daad.manifest={bank_manifest}"])
    for bad in ({"clone_mode": "poisson"}, {"quotas": {"large": 0, "medium": 0, "small": 0}}):
        with pytest.raises(Exception) as err:  # noqa: PT011 - Hydra wraps the ConfigError
            instantiate(cfg.synthesizer.params, **bad)
        assert isinstance(err.value.__cause__, ConfigError)


# ----------------------------------------------------------------------------- configs
def test_configs_compose_and_match_the_paper_tables() -> None:
    with (REPO / "results" / "paper" / "table1_pixel_iad.csv").open() as f:
        rows = {r["synthesizer"] for r in csv.DictReader(f)}
    for mode, clone, display in (("cai_n", "normal", "CAI-N"), ("cai_m", "mixed", "CAI-M")):
        cfg = compose_cai([f"synthesizer={mode}"])
        assert cfg.synthesizer.name == mode and cfg.synthesizer.display_name == display in rows
        assert cfg.synthesizer.n_per_image == 10
        assert cfg.synthesizer.params.clone_mode == clone
        assert dict(cfg.synthesizer.params.quotas) == {"large": 4, "medium": 3, "small": 3}
        assert cfg.synthesizer.params.label.threshold == 7
    for name, q in {
        "large": (6, 2, 2),
        "medium": (2, 6, 2),
        "small": (2, 2, 6),
        "balanced": (4, 3, 3),
    }.items():
        quotas = compose_cai([f"scale={name}"]).synthesizer.params.quotas
        assert (quotas.large, quotas.medium, quotas.small) == q
    for name, flags in {
        "full": (True, True, True),
        "no_pe": (False, True, True),
        "no_stm": (True, False, True),
        "no_ils": (True, True, False),
    }.items():
        ab = compose_cai([f"ablation={name}"]).synthesizer.params.ablation
        assert (ab.pe, ab.stm, ab.ils) == flags


@pytest.mark.shared_data
def test_ball_screw_with_daad_mini(shared_data: Path) -> None:
    from cai.io import read_image, resize_image

    syn = make_cai(None, [f"paths.shared_data_dir={shared_data}"], leakage=["bsdata"])
    assert {it.source for it in syn.bank.items} == {"crackforest", "neu"}
    assert isinstance(syn.bank[0], BankItem)
    path = sorted((shared_data / "bsdata_ad" / "ball_screw" / "train" / "good").glob("*.png"))[0]
    image = resize_image(read_image(path), 256)
    info = syn.generate_with_info(image, np.ones((256, 256), bool), np.random.default_rng(0), 10)
    assert counts(info) == {"large": 4, "medium": 3, "small": 3}
    assert all(i.mask.any() for i in info)


@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 9))
def test_ils_sampler_covers_exactly_the_candidate_set(seed: int, ph: int, pw: int) -> None:
    rng = np.random.default_rng(seed)
    fg = rng.random((10, 12)) < 0.3
    if not fg.any():
        return
    syn = CAISynthesizer.__new__(CAISynthesizer)
    syn._target_key = syn._target = None
    tgt = syn._target_for(fg)
    expected = {
        (y, x)
        for y in range(10)
        for x in range(12)
        if fg[y, x]
        and y - ph // 2 >= 0
        and y - ph // 2 + ph <= 10
        and x - pw // 2 >= 0
        and x - pw // 2 + pw <= 12
    }
    cand = syn._candidates(tgt, ph, pw, True)
    if not expected:
        assert cand is None
        return
    picks = {syn._pick(tgt, cand, rng) for _ in range(40 * len(expected))}
    assert picks == expected


# ----------------------------------------------------------------------------- PE region / label rule
def _grown(box: tuple[int, int, int, int], min_side: int = 0, pad: int = 0) -> np.ndarray:
    """Bool map of ``box`` widened to ``min_side`` per side (as CAI's official window) plus ``pad`` px."""
    top, left, h, w = box
    gy, gx = max(0, min_side - h), max(0, min_side - w)
    region = np.zeros((TARGET, TARGET), bool)
    y0, x0 = max(0, top - gy // 2 - pad), max(0, left - gx // 2 - pad)
    region[y0 : top + h + gy - gy // 2 + pad, x0 : left + w + gx - gx // 2 + pad] = True
    return region


@pytest.mark.parametrize("mode", ["cai_n", "cai_m"])
def test_official_region_edits_and_labels_only_the_patterns_tight_box(bank_manifest: Path, mode: str) -> None:
    # official code: the source is cropped to the box of mask > 128 and resized, so closing, dilation
    # and seamlessClone never reach past that box
    cfg = compose_cai([f"synthesizer={mode}"])
    assert cfg.synthesizer.params.clone.region == "official"
    min_side = cfg.synthesizer.params.clone.min_side
    image = target_image()
    info = _run(bank_manifest, [f"synthesizer={mode}"], FULL)
    assert all(i.mask.any() for i in info)
    for inj in info:
        box = _grown(inj.box, min_side)
        assert np.array_equal(inj.image[~box], image[~box]), "PE changed pixels outside the tight box"
        assert not (inj.mask & ~box).any(), "label outside the tight box"


def _replayed(manifest: Path, overrides: list[str], draws) -> list:
    """``draws`` (Injections of another run) replayed one by one with another configuration."""
    syn = make_cai(manifest, overrides)
    index = {it: k for k, it in enumerate(syn.bank.items)}
    return [
        syn.replay(target_image(), FULL, index[d.item], d.target_ratio, d.scale, np.random.default_rng(k))
        for k, d in enumerate(draws)
    ]


def test_context_region_reaches_past_the_box_on_the_same_draws(bank_manifest: Path) -> None:
    draws = _run(bank_manifest, ["synthesizer=cai_n_context"], FULL)
    official = _replayed(bank_manifest, [], draws)
    context = _replayed(bank_manifest, ["synthesizer=cai_n_context"], draws)
    pairs = [(o, c) for o, c in zip(official, context, strict=True) if o is not None]
    assert len(pairs) >= 5 and all(c is not None for c in context)
    for o, c in pairs:
        assert (o.location, o.box) == (c.location, c.box)
    outside = [int((c.mask & ~_grown(c.box, 9)).sum()) for _, c in pairs]
    assert sum(n > 0 for n in outside) >= len(pairs) // 2  # the dilated clone mask and the halo pass the box
    assert sum(c.mask.sum() for _, c in pairs) > sum(o.mask.sum() for o, _ in pairs)


def test_pattern_label_rule_drops_the_halo_and_keeps_the_image(bank_manifest: Path) -> None:
    image = target_image()
    for base, tight in (("cai_n_context", ["synthesizer=cai_n_context", "synthesizer.params.label.rule=pattern"]),
                        ("cai_n", ["synthesizer=cai_n_tight"])):
        paper = _run(bank_manifest, [f"synthesizer={base}"], FULL)
        pattern = _run(bank_manifest, tight, FULL)
        for a, b in zip(paper, pattern, strict=True):
            assert np.array_equal(a.image, b.image) and a.location == b.location
            assert b.mask.any() and (b.mask <= a.mask).all()
            # the clone mask is the pattern's box-clipped mask closed then dilated by 8x8 (<= 4 px out)
            assert not (b.mask & ~_grown(b.box, pad=4) & ~_grown(b.box, 9)).any()
            assert np.array_equal(b.image, image) is False
        assert sum(b.mask.sum() for b in pattern) < sum(a.mask.sum() for a in paper)


def test_tight_and_context_configs_are_named_variants() -> None:
    for name, display, region, rule in (
        ("cai_n", "CAI-N", "official", "paper"),
        ("cai_m", "CAI-M", "official", "paper"),
        ("cai_n_context", "CAI-N (context)", "context", "paper"),
        ("cai_m_context", "CAI-M (context)", "context", "paper"),
        ("cai_n_tight", "CAI-N (tight label)", "official", "pattern"),
        ("cai_m_tight", "CAI-M (tight label)", "official", "pattern"),
    ):
        syn = compose_cai([f"synthesizer={name}"]).synthesizer
        assert (syn.name, syn.display_name) == (name, display)
        assert (syn.params.clone.region, syn.params.label.rule) == (region, rule)
        assert syn.params.clone_mode == ("mixed" if name.startswith("cai_m") else "normal")


@pytest.mark.parametrize("bad", [{"clone": {"region": "box"}}, {"label": {"rule": "tight"}}])
def test_unknown_region_or_label_rule_is_a_config_error(bank_manifest: Path, bad: dict) -> None:
    cfg = compose_cai([f"daad.manifest={bank_manifest}"])
    params = OmegaConf.merge(cfg.synthesizer.params, bad)
    with pytest.raises(Exception) as err:  # noqa: PT011 - Hydra wraps the ConfigError
        instantiate(params)
    assert isinstance(err.value.__cause__, ConfigError)
