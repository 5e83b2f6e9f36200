"""RealNet (SDAS): sampler vs plain DDPM, √(1+s) noise inflation, pool, blend, normal rate, checkpoints,
missing-checkpoint message, and a 2-step DDPM training run that resumes exactly."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from hydra.utils import instantiate
from omegaconf import OmegaConf

import cai.config  # noqa: F401 - resolvers and PROJECT_ROOT, as every entry point
from baselines import realnet as rn
from baselines.realnet_train import (
    DiffusionCoefs,
    build_unet,
    ema_decay_at,
    ema_warmup_enabled,
    hybrid_loss,
    init_from_checkpoint,
    run,
)
from cai.errors import ConfigError, MissingFileError
from cai.synth.base import check_output
from tests.baselines.conftest import CONF_DIR, context, natural_image, raises_cai
from tests.conftest import REPO_ROOT, compose_config
from tests.data.fixtures import make_mvtec

CATEGORIES = ["widget", "gadget"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny convolutions run several times faster on one thread than on two contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(out_channels: int = 6, classes: int | None = 2, size: int = 16) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=classes, out_channels=out_channels, attention_head_dim=None,
    ).eval()


def save_tiny(directory: Path, variance_type: str = "learned_range", dataset: str = "toy") -> Path:
    out_channels = 6 if variance_type == "learned_range" else 3
    rn.write_checkpoint(directory, tiny_unet(out_channels), DDPMScheduler(variance_type=variance_type),
                        {"dataset": dataset, "categories": CATEGORIES, "image_size": 16, "step": 0})
    return directory


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_tiny(tmp_path / "models" / "realnet" / "toy")


def synth_cfg(tmp_path: Path, **overrides):
    cfg = OmegaConf.create({
        "paths": {"model_dir": str(tmp_path / "models"), "cache_dir": str(tmp_path / "cache")},
        "dataset": {"name": "toy"}, "seed": 0,
        "synthesizer": OmegaConf.load(CONF_DIR / "realnet.yaml"),
    })
    small = {"pool_size": 6, "pool_batch_size": 2, "pool_cache_dir": None, "device": "cpu"}
    for key, value in {**small, **overrides}.items():
        cfg.synthesizer.params[key] = value
    return cfg


def build(tmp_path: Path, **overrides) -> rn.RealNet:
    return instantiate(synth_cfg(tmp_path, **overrides).synthesizer.params)


def prepared(tmp_path: Path, normals=None, category: str = "widget", **overrides) -> rn.RealNet:
    s = build(tmp_path, **overrides)
    normals = normals if normals is not None else [natural_image(np.random.default_rng(0), 48, 48)]
    s.prepare(context(normals, category=category))
    return s


# -- config ------------------------------------------------------------------------------------------
def test_yaml_shape_and_display_name():
    raw = OmegaConf.load(CONF_DIR / "realnet.yaml")
    assert list(raw.keys()) == ["name", "display_name", "n_per_image", "params"]
    assert raw.name == "realnet" and raw.n_per_image == 10 and raw.params._target_ == "baselines.realnet.RealNet"
    with open(REPO_ROOT / "results" / "paper" / "table1_pixel_iad.csv") as f:
        assert raw.display_name in {row["synthesizer"] for row in csv.DictReader(f)}
    p = OmegaConf.to_container(raw.params, resolve=False)
    assert (p["num_inference_steps"], p["strength_range"], p["blend_range"]) == (20, [0.1, 0.2], [0.5, 1.0])
    assert p["normal_probability"] == 0.5 and p["checkpoint"] == "${paths.model_dir}/realnet/${dataset.name}"


def _compose_train(tmp_path: Path, overrides: list[str]):
    return compose_config("train_realnet_ddpm", overrides, tmp_path)


@pytest.mark.parametrize("option", ["tiny", "cpu", "adm256"])
def test_train_config_composes(option, tmp_path):
    cfg = _compose_train(tmp_path, [f"realnet_ddpm={option}"])
    r = OmegaConf.to_container(cfg.realnet_ddpm, resolve=True)
    assert r["lr"] == 1e-4 and r["ema_decay"] == 0.9999 and r["num_train_timesteps"] == 1000
    assert r["output_dir"].endswith("/realnet/demo")
    if option == "adm256":
        assert r["image_size"] == 256 and r["unet"]["block_out_channels"] == [256, 256, 512, 512, 1024, 1024]
        with torch.device("meta"):
            unet = build_unet(cfg.realnet_ddpm.unet, 256, 15, True)
        n = sum(p.numel() for p in unet.parameters())
        assert 540e6 < n < 570e6  # ADM 256x256 class-conditional: ~554M
        assert unet.config.down_block_types[3:] == ("AttnDownBlock2D",) * 3 and unet.config.out_channels == 6


# -- sampler -----------------------------------------------------------------------------------------
def test_ddim_stride_timesteps():
    assert rn.ddim_stride_timesteps(1000, 20) == list(range(950, -1, -50))
    ts = rn.ddim_stride_timesteps(1000, 30)  # space_timesteps: smallest stride with 30 steps is 34
    assert len(ts) == 30 and ts[-1] == 0 and ts[0] == 29 * 34
    with pytest.raises(ConfigError):
        rn.ddim_stride_timesteps(10, 11)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_s_zero_is_plain_ddpm_on_the_respaced_schedule(variance_type):
    unet = tiny_unet(6 if variance_type == "learned_range" else 3)
    sched = DDPMScheduler(variance_type=variance_type)
    ts = rn.ddim_stride_timesteps(1000, 20)
    labels = torch.tensor([0, 1])
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 3, 16, 16, generator=g)
    ours = rn.sdas_sample(unet, rn.alphas_cumprod64(sched), ts, x_T, 0.0, g, variance_type, labels)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=g)
    sched.set_timesteps(timesteps=ts)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t, class_labels=labels).sample, t, x, generator=g).prev_sample
    assert torch.allclose(ours, x, atol=1e-4)
    assert float(ours.abs().max()) > 0.05  # not a degenerate chain


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_noise_std_is_inflated_by_sqrt_one_plus_s(variance_type):
    sched = DDPMScheduler(variance_type=variance_type)
    acp = rn.alphas_cumprod64(sched)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    out = torch.randn(2, 6 if variance_type == "learned_range" else 3, 8, 8, generator=gen).clamp(-1, 1)
    z = torch.randn(2, 3, 8, 8, generator=gen)
    plain = rn.sdas_step(out, x, 500, 450, acp, 0.0, z, variance_type)
    for s in (0.1, 0.15, 0.2):
        sdas = rn.sdas_step(out, x, 500, 450, acp, s, z, variance_type)
        assert torch.equal(sdas.mean, plain.mean) and torch.equal(sdas.std, plain.std)
        ratio = (sdas.sample - sdas.mean) / (plain.sample - plain.mean)
        assert torch.allclose(ratio, torch.full_like(ratio, math.sqrt(1 + s)), atol=1e-4)
    # σ itself is the DDPM one: diffusers' variance for this respaced step
    sched.set_timesteps(timesteps=rn.ddim_stride_timesteps(1000, 20))
    pv = sched._get_variance(500, predicted_variance=out[:, 3:] if variance_type == "learned_range" else None)
    want = torch.exp(0.5 * pv) if variance_type == "learned_range" else pv.sqrt().expand_as(plain.std)
    assert torch.allclose(plain.std, want.float(), rtol=1e-4)
    # the last step adds no noise, whatever s
    last = rn.sdas_step(out, x, 0, -1, acp, 0.2, z, variance_type)
    assert torch.equal(last.sample, last.mean)


def test_empirical_step_std_grows_by_sqrt_one_plus_s():
    """Same step, many independent noise draws: the spread around the mean scales by √(1+s)."""
    sched = DDPMScheduler(variance_type="fixed_small")
    acp = rn.alphas_cumprod64(sched)
    x = torch.zeros(4000, 3, 2, 2)
    out = torch.zeros(4000, 3, 2, 2)
    stds = {}
    for s in (0.0, 0.2):
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(s * 10)))
        step = rn.sdas_step(out, x, 300, 250, acp, s, z, "fixed_small")
        stds[s] = float((step.sample - step.mean).std())
    assert abs(stds[0.2] / stds[0.0] - math.sqrt(1.2)) < 0.02


# -- synthesizer -------------------------------------------------------------------------------------
def test_output_contract(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    normals = [natural_image(rng, 40, 56) for _ in range(2)]
    s = prepared(tmp_path, normals)
    img, before = normals[0], normals[0].copy()
    outs = s.generate(img, np.ones((40, 56), bool), np.random.default_rng(1), 8)
    assert len(outs) == 8
    for out, mask in outs:
        check_output(img, out, mask)
    assert np.array_equal(img, before)
    assert any(m.any() for _, m in outs) and any(not m.any() for _, m in outs)
    assert len(s.pool) == 6 and all(p.shape == (16, 16, 3) and p.dtype == np.uint8 for p in s.pool)


def test_blend_inside_mask_and_nothing_outside(ckpt, tmp_path):
    s = prepared(tmp_path)
    img = natural_image(np.random.default_rng(5), 48, 48)
    fg = np.ones((48, 48), bool)
    rng = np.random.default_rng(2)
    seen = 0
    for _ in range(60):
        d = s.synthesize(img, fg, rng)
        assert np.array_equal(d.image[~d.mask], img[~d.mask])
        if d.left_normal or not d.mask.any():
            continue
        seen += 1
        assert 0.5 <= d.factor <= 1.0
        sdas = rn.cv2.resize(s.pool[d.pool_index], (48, 48), interpolation=rn.cv2.INTER_LINEAR).astype(float)
        a, b, out = img[d.mask].astype(float), sdas[d.mask], d.image[d.mask].astype(float)
        assert np.all(out >= np.minimum(a, b) - 0.5) and np.all(out <= np.maximum(a, b) + 0.5)
        assert np.abs(out - np.round(d.factor * b + (1 - d.factor) * a)).max() <= 1
    assert seen > 10


def test_normal_probability(ckpt, tmp_path):
    s = prepared(tmp_path)
    img, fg, n = natural_image(np.random.default_rng(0), 32, 32), np.ones((32, 32), bool), 400
    rng = np.random.default_rng(0)
    draws = [s.synthesize(img, fg, rng) for _ in range(n)]
    rate = np.mean([d.left_normal for d in draws])
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / n)
    for d in draws:
        if d.left_normal:
            assert not d.mask.any() and np.array_equal(d.image, img)


def test_mask_is_perlin_within_the_foreground(ckpt, tmp_path):
    s = prepared(tmp_path)
    img = natural_image(np.random.default_rng(0), 48, 48)
    fg = np.zeros((48, 48), bool)
    fg[:, :24] = True
    rng = np.random.default_rng(4)
    masks = [s.synthesize(img, fg, rng).mask for _ in range(100)]
    assert all(not (m & ~fg).any() for m in masks) and any(m.any() for m in masks)
    # an empty foreground gives an empty mask and the untouched image (no resampling, as RealNet)
    for _ in range(10):
        out, m = s(img, np.zeros((48, 48), bool), rng)
        assert not m.any() and np.array_equal(out, img)


def test_deterministic_under_a_seed(ckpt, tmp_path):
    img, fg = natural_image(np.random.default_rng(7), 40, 40), np.ones((40, 40), bool)
    runs = [prepared(tmp_path).generate(img, fg, np.random.default_rng(42), 6) for _ in range(2)]
    for (a, am), (b, bm) in zip(*runs, strict=True):
        assert a.tobytes() == b.tobytes() and am.tobytes() == bm.tobytes()
    other = prepared(tmp_path).generate(img, fg, np.random.default_rng(43), 6)
    assert any(a.tobytes() != b.tobytes() for (a, _), (b, _) in zip(runs[0], other, strict=True))


def test_pool_strengths_batches_categories_and_seed(ckpt, tmp_path):
    a = prepared(tmp_path)
    assert len(a.pool_strengths) == 6 and all(0.1 <= v <= 0.2 for v in a.pool_strengths)
    assert a.pool_strengths[0::2] == a.pool_strengths[1::2]  # one s per batch of pool_batch_size (2)
    assert len(set(a.pool_strengths)) == 3
    b = prepared(tmp_path, category="gadget")
    c = prepared(tmp_path, seed=1)
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a.pool, b.pool, strict=True))
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a.pool, c.pool, strict=True))


def test_pool_cache_is_reused(ckpt, tmp_path, monkeypatch):
    cache = tmp_path / "pool"
    first = prepared(tmp_path, pool_cache_dir=str(cache))
    (folder,) = (cache / "toy").iterdir()
    assert folder.name.startswith("widget-") and len(list(folder.glob("*.jpg"))) == 6
    assert (folder / "pool.json").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("the cached pool should have been read")

    monkeypatch.setattr(rn.RealNet, "sample_pool", boom)
    second = prepared(tmp_path, pool_cache_dir=str(cache))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(first.pool, second.pool, strict=True))
    assert first.pool_strengths == second.pool_strengths
    monkeypatch.undo()
    lossless = prepared(tmp_path, pool_cache_dir=str(cache), pool_jpeg_quality=None)
    assert len(list(cache.glob("toy/widget-*"))) == 2 and len(lossless.pool) == 6


def test_jpeg_round_trip_matches_sample_py(ckpt, tmp_path):
    jpeg = prepared(tmp_path)
    png = prepared(tmp_path, pool_jpeg_quality=None)
    for a, b in zip(jpeg.pool, png.pool, strict=True):  # the same samples, JPEG'd with PIL at quality 75
        assert a.tobytes() == rn.decode_image_bytes(rn.jpeg_bytes(b, 75)).tobytes()
        assert a.tobytes() != b.tobytes()


def test_missing_checkpoint_names_the_training_command(tmp_path):
    where = tmp_path / "models" / "realnet" / "toy"
    with raises_cai(MissingFileError) as ctx:
        build(tmp_path)
    msg = ctx.value.message
    assert f"python scripts/train_realnet_ddpm.py dataset=toy realnet_ddpm.output_dir={where}" in msg
    assert str(where) in msg and "realnet_ddpm=adm256" in msg


def test_checkpoint_must_match_dataset_and_category(tmp_path):
    save_tiny(tmp_path / "models" / "realnet" / "toy", dataset="other")
    s = build(tmp_path)
    with pytest.raises(ConfigError, match="trained on dataset 'other'"):
        s.prepare(context([natural_image(np.random.default_rng(0), 16, 16)]))
    save_tiny(tmp_path / "models" / "realnet" / "toy")
    with pytest.raises(ConfigError, match="no class for category 'sprocket'"):
        prepared(tmp_path, category="sprocket")


def test_sdas_dir_in_realnet_layout(tmp_path):
    folder = tmp_path / "sdas" / "widget"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        rn.cv2.imwrite(str(folder / f"rank0_{i}.jpg"), natural_image(rng, 24, 24))
    s = prepared(tmp_path, sdas_dir=str(tmp_path / "sdas"))  # no checkpoint needed
    assert len(s.pool) == 3
    out, mask = s(natural_image(rng, 32, 32), np.ones((32, 32), bool), np.random.default_rng(1))
    assert out.shape == (32, 32, 3)
    with pytest.raises(MissingFileError):
        prepared(tmp_path, category="gadget", sdas_dir=str(tmp_path / "sdas"))


def test_checkpoint_swap_is_recoverable(tmp_path):
    d = save_tiny(tmp_path / "ck")
    save_tiny(d)  # overwrite: the old copy is renamed aside, then removed
    assert rn.read_checkpoint_meta(d)["categories"] == CATEGORIES
    assert not (tmp_path / ".ck.old").exists() and not list(tmp_path.glob(".ck.tmp-*"))
    rn.os.replace(d, tmp_path / ".ck.old")  # crash between the two renames
    assert rn.read_checkpoint_meta(d) is not None and d.is_dir()


# -- training ----------------------------------------------------------------------------------------
def test_hybrid_loss_is_zero_for_the_true_noise_and_posterior_variance():
    c = DiffusionCoefs.from_scheduler(DDPMScheduler(), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 5, 40, 300])
    x_t = c.sqrt_ac[t].view(-1, 1, 1, 1) * x0 + c.sqrt_1m_ac[t].view(-1, 1, 1, 1) * noise
    perfect = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # ε exact, v = −1: σ² = posterior variance
    loss = hybrid_loss(perfect, x0, x_t, t, noise, c, True)
    assert float(loss[1:].abs().max()) < 1e-4  # KL(q ‖ p) = 0 for t > 0
    assert 0 < float(loss[0]) < 10  # t = 0: the discretised decoder NLL in bits/dim
    worse = torch.cat([noise, torch.ones_like(noise)], dim=1)  # σ² = β: KL(N(μ, β̃) ‖ N(μ, β)) in bits
    r = torch.exp(c.post_logvar_clipped[t[1:]] - c.log_betas[t[1:]])
    want = 0.5 * (r - 1 - torch.log(r)) / math.log(2.0)
    assert torch.allclose(hybrid_loss(worse, x0, x_t, t, noise, c, True)[1:], want, rtol=1e-3, atol=1e-7)
    assert float(want[0]) > 1e-3
    assert torch.allclose(hybrid_loss(noise + 0.1, x0, x_t, t, noise, c, False), torch.full((4,), 0.01))


def _train_overrides(tmp_path: Path, out: Path, max_steps: int) -> list[str]:
    root = make_mvtec(tmp_path / "mvtec", categories=("bottle", "carpet"), n_train=3)
    return [
        "dataset=mvtec", f"dataset.reader.root={root}", "dataset.categories=[bottle,carpet]",
        "dataset.textures=[carpet]", f"paths.model_dir={tmp_path / 'models'}", "device=cpu",
        f"realnet_ddpm.output_dir={out}", "realnet_ddpm.image_size=16",
        "realnet_ddpm.unet.block_out_channels=[8,16]", "realnet_ddpm.unet.attention_resolutions=[8]",
        "realnet_ddpm.unet.attention_head_dim=8", "realnet_ddpm.unet.norm_num_groups=4",
        "realnet_ddpm.batch_size=2", "realnet_ddpm.accumulate=2", "realnet_ddpm.save_every=1",
        "realnet_ddpm.hflip=true", f"realnet_ddpm.max_steps={max_steps}",
    ]


def test_two_step_training_writes_a_checkpoint_and_resumes_exactly(tmp_path):
    out = tmp_path / "models" / "realnet" / "mvtec"
    result = run(_compose_train(tmp_path, _train_overrides(tmp_path, out, 2)), tmp_path)
    meta = rn.read_checkpoint_meta(out)
    assert result.step == 2 and meta["step"] == 2 and meta["categories"] == ["bottle", "carpet"]
    assert (out / "unet").is_dir() and (out / "scheduler").is_dir() and (out / "train_state.pt").is_file()
    assert math.isfinite(result.last_loss)

    resumed = run(_compose_train(tmp_path, _train_overrides(tmp_path, out, 3)), tmp_path)
    assert resumed.step == 3 and rn.read_checkpoint_meta(out)["step"] == 3

    straight_dir = tmp_path / "straight"
    run(_compose_train(tmp_path, _train_overrides(tmp_path, straight_dir, 3)), tmp_path)
    a = UNet2DModel.from_pretrained(out / "unet", low_cpu_mem_usage=False).state_dict()
    b = UNet2DModel.from_pretrained(straight_dir / "unet", low_cpu_mem_usage=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # resume continues the same run
    sa, sb = (torch.load(d / "train_state.pt", weights_only=False)["model"] for d in (out, straight_dir))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # the trained checkpoint drives the synthesizer end to end
    unet, sched, _ = rn.load_sdas_model(out)
    assert sched.config.variance_type == "learned_range" and unet.config.out_channels == 6
    s = instantiate(synth_cfg(tmp_path, checkpoint=str(out), dataset="mvtec").synthesizer.params)
    from cai.synth.base import SynthesisContext

    s.prepare(SynthesisContext("mvtec", "carpet", True, 32))
    out_img, mask = s(natural_image(np.random.default_rng(0), 32, 32), np.ones((32, 32), bool),
                      np.random.default_rng(3))
    check_output(np.zeros((32, 32, 3), np.uint8), out_img, mask)


def test_resume_refuses_a_different_setup(tmp_path):
    out = tmp_path / "ck"
    run(_compose_train(tmp_path, _train_overrides(tmp_path, out, 1)), tmp_path)
    cfg = _compose_train(tmp_path, [*_train_overrides(tmp_path, out, 2), "realnet_ddpm.learn_sigma=false"])
    with pytest.raises(ConfigError, match="learn_sigma"):
        run(cfg, tmp_path)


def test_generate_records_match_generate_and_carry_provenance(ckpt, tmp_path):
    s = prepared(tmp_path)
    img, fg = natural_image(np.random.default_rng(1), 40, 40), np.ones((40, 40), bool)
    plain = s.generate(img, fg, np.random.default_rng(9), 8)
    records = s.generate_records(img, fg, np.random.default_rng(9), 8)
    for (a, am), (b, bm, info) in zip(plain, records, strict=True):
        assert a.tobytes() == b.tobytes() and am.tobytes() == bm.tobytes()
        if not info["left_normal"]:
            assert 0 <= info["sdas_index"] < 6 and 0.5 <= info["blend_factor"] <= 1
            assert 0.1 <= info["sdas_strength"] <= 0.2
    assert {r[2]["left_normal"] for r in records} == {True, False}


def test_contract_properties(ckpt, tmp_path):
    """Hypothesis scenes of tests/test_properties.py: contract, nothing outside the mask, mask ⊆ foreground."""
    from hypothesis import HealthCheck, given, settings

    from tests.test_properties import scenes

    s = prepared(tmp_path)
    anomalous = []

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenes())
    def check(scene):
        normals, fg, seed = scene
        out, mask = s(normals[0], fg, np.random.default_rng(seed))
        check_output(normals[0], out, mask)
        assert np.array_equal(out[~mask], normals[0][~mask]) and not (mask & ~fg).any()
        anomalous.append(bool(mask.any()))

    check()
    assert any(anomalous)


def _run_entry_point(args: list[str], tmp_path: Path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "CAI_CACHE": str(tmp_path / "cache"),
           "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


E2E = ["logger=none", "synthesizer=realnet", "foreground=otsu", "dataset=demo", "dataset.category=coin",
       "dataset.image_size=64", "dataset.reader.n_train=4", "dataset.reader.n_test_good=2",
       "dataset.reader.n_test_anomalous=3", "synthesizer.n_per_image=2", "synthesis.workers=1"]


@pytest.mark.slow
def test_entry_point_names_the_training_command_when_the_checkpoint_is_missing(tmp_path):
    models = tmp_path / "no_models"
    proc = _run_entry_point([*E2E, f"paths.model_dir={models}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    command = f"python scripts/train_realnet_ddpm.py dataset=demo realnet_ddpm.output_dir={models}/realnet/demo"
    assert command in proc.stderr


@pytest.mark.slow
def test_entry_point_end_to_end_with_a_tiny_checkpoint(tmp_path):
    import json

    ck = tmp_path / "models" / "realnet" / "demo"
    rn.write_checkpoint(ck, tiny_unet(classes=4), DDPMScheduler(variance_type="learned_range"),
                        {"dataset": "demo", "categories": ["brick", "grass", "gravel", "coin"], "image_size": 16})
    run_dir = tmp_path / "run"
    proc = _run_entry_point([*E2E, f"paths.model_dir={tmp_path / 'models'}", "synthesizer.params.pool_size=8",
                             "detector.model.base_width=4", "detector.epochs=1", "detector.samples_per_epoch=8",
                             "detector.batch_size=4", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["display_name"] == "RealNet" and metrics["n_pseudo"] == 8
    assert list((tmp_path / "cache" / "realnet_sdas" / "demo").glob("coin-*/pool.json"))


# -- EMA warm-up and init_checkpoint (issue #11) ------------------------------------------------------
def _weights(module_or_dict) -> torch.Tensor:
    sd = module_or_dict if isinstance(module_or_dict, dict) else module_or_dict.state_dict()
    return torch.cat([v.float().flatten() for k, v in sorted(sd.items()) if v.dtype.is_floating_point])


def _moved(tmp_path: Path, out: Path, extra: list[str], steps: int = 30) -> float:
    """Fraction of the way the sampled (EMA) weights moved from the initial weights to the raw ones."""
    from cai.seeding import seed_everything

    cfg = _compose_train(tmp_path, [*_train_overrides(tmp_path, out, steps), f"realnet_ddpm.save_every={steps}",
                                    *extra])
    seed_everything(int(cfg.seed))  # run() seeds the same way before it builds the UNet
    init = _weights(build_unet(cfg.realnet_ddpm.unet, 16, 2, True))
    run(cfg, tmp_path)
    ema = _weights(UNet2DModel.from_pretrained(out / "unet", low_cpu_mem_usage=False))
    raw = _weights(torch.load(out / "train_state.pt", weights_only=False)["model"])
    return float(1 - (ema - raw).norm() / (init - raw).norm())


@pytest.mark.slow
def test_ema_warmup_moves_the_sampled_weights_off_the_random_init(tmp_path):
    assert _compose_train(tmp_path, []).realnet_ddpm.ema_warmup == "auto"
    assert _moved(tmp_path, tmp_path / "auto", []) > 0.8  # default: from scratch -> warm-up
    assert _moved(tmp_path, tmp_path / "const", ["realnet_ddpm.ema_warmup=false"]) < 0.05  # 0.9999^30: init


def test_ema_decay_schedule():
    assert ema_decay_at(0.9999, True, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.9999, True, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.9999, True, 10**6) == 0.9999 == ema_decay_at(0.9999, False, 0)
    cfg = OmegaConf.create({"ema_warmup": "auto", "init_checkpoint": None})
    assert ema_warmup_enabled(cfg) is True
    cfg.init_checkpoint = "/some/folder"
    assert ema_warmup_enabled(cfg) is False  # fine-tuning: RealNet's constant decay
    with pytest.raises(ConfigError):
        ema_warmup_enabled(OmegaConf.create({"ema_warmup": "sometimes"}))


def test_init_checkpoint_loads_a_project_checkpoint_and_errors_clearly(tmp_path):
    out = tmp_path / "ck"
    run(_compose_train(tmp_path, _train_overrides(tmp_path, out, 1)), tmp_path)
    cfg = _compose_train(tmp_path, _train_overrides(tmp_path, tmp_path / "unused", 1))
    unet = build_unet(cfg.realnet_ddpm.unet, 16, 2, True)
    assert init_from_checkpoint(unet, out) == len(unet.state_dict())
    saved = UNet2DModel.from_pretrained(out / "unet", low_cpu_mem_usage=False).state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in unet.state_dict().items())
    assert init_from_checkpoint(build_unet(cfg.realnet_ddpm.unet, 16, 2, True), out / "unet") > 0  # diffusers folder
    with pytest.raises(ConfigError, match="not found"):
        init_from_checkpoint(unet, tmp_path / "missing")
    pt = tmp_path / "256x256_diffusion.pt"
    pt.write_bytes(b"not converted")
    with pytest.raises(ConfigError, match="not converted"):
        init_from_checkpoint(unet, pt)
    # through the config: a given but missing init_checkpoint stops training with the ConfigError
    with raises_cai(ConfigError):
        run(_compose_train(tmp_path, [*_train_overrides(tmp_path, tmp_path / "x", 1),
                                      f"realnet_ddpm.init_checkpoint={tmp_path / 'missing'}"]), tmp_path)


def test_adm256_fine_tunes_from_the_documented_place(tmp_path):
    r = _compose_train(tmp_path, ["realnet_ddpm=adm256", f"paths.model_dir={tmp_path}"]).realnet_ddpm
    assert r.init_checkpoint == f"{tmp_path}/realnet/init/imagenet256_adm" and r.name == "adm256"
    readme = (REPO_ROOT / "README.md").read_text()
    assert "realnet/init/imagenet256_adm" in readme and "256x256_diffusion.pt" in readme


def test_table_runs_require_the_paper_scale_ddpm(ckpt, tmp_path):
    assert compose_config("config", ["synthesizer=realnet"], tmp_path).synthesizer.params.require_setting is None
    table = compose_config("config", ["experiment=table1", "synthesizer=realnet"], tmp_path)
    assert table.synthesizer.params.require_setting == "adm256"
    strict = build(tmp_path, checkpoint=str(ckpt), require_setting="adm256")
    with pytest.raises(ConfigError, match="realnet_ddpm=adm256") as err:
        strict.prepare(context([natural_image(np.random.default_rng(0), 16, 16)], CATEGORIES[0]))
    assert "train_realnet_ddpm.py" in str(err.value)
    build(tmp_path, checkpoint=str(ckpt)).prepare(context([natural_image(np.random.default_rng(0), 16, 16)],
                                                          CATEGORIES[0]))  # no requirement: fine


def test_training_records_its_setting(tmp_path):
    out = tmp_path / "ck"
    run(_compose_train(tmp_path, _train_overrides(tmp_path, out, 1)), tmp_path)
    assert rn.read_checkpoint_meta(out)["setting"] == "tiny"
