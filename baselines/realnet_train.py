"""Training RealNet's SDAS diffusion model: one class-conditional DDPM per dataset on its normal images.

Port of cnulab/RealNet ``train_diffusion.py`` + ``experiments/<dataset>/diffusion.yaml`` (read at ab75012)
to a diffusers ``UNet2DModel`` + ``DDPMScheduler``:

* data: every normal training image of the dataset's categories (``train_uni.json``), resized to
  ``image_size``, scaled to [−1, 1]; the class label is the category's index (``utils/categories.py`` order
  there, the dataset config's order here); flips are off in RealNet's configs (``hflip/vflip: False``).
* model: ADM UNet with ``learn_sigma`` (6 output channels), class embedding added to the time embedding
  (``num_class_embeds``), scale-shift norm, resblock up/down sampling, attention at 32/16/8 px.
* diffusion: T = 1000, linear β from 1e-4 to 0.02, uniform t; loss = ε-MSE + the variational bound term
  with the mean frozen (``gauss_sample.py::training_losses``, improved-DDPM "hybrid" loss, not rescaled).
* optimisation: Adam(lr 1e-4, betas (0.9, 0.999), no weight decay), gradients accumulated over
  ``accumulate`` micro-batches without averaging and norm-clipped to 1.0 after every backward (as the
  original loop does), EMA with decay 0.9999 after every optimizer step; the EMA weights are the ones
  sampled from.

Deviations: RealNet fine-tunes OpenAI's ImageNet ``256x256_diffusion.pt``; here ``init_checkpoint``
accepts a diffusers ``UNet2DModel`` folder (a converted ADM checkpoint, say) or a checkpoint folder of
this project (its ``unet/``); weights of matching name and shape are copied, like RealNet's
``load_pertrain_weights``. OpenAI's original ``.pt`` files are not converted here (a clear error says so).
Without ``init_checkpoint`` the UNet starts from scratch, and then a constant EMA decay of 0.9999 leaves
the sampled weights mostly at their random initialisation for the first ~10k steps (after 2,000 steps
0.9999^2000 = 82 % of the init remains), so ``ema_warmup: auto`` (the default) uses the decay
min(0.9999, (1+n)/(10+n)) at optimizer step n when training from scratch: the schedule of TensorFlow's
``ExponentialMovingAverage(num_updates=n)`` and diffusers' ``EMAModel`` (its default, without
``use_ema_warmup``). Fine-tuning keeps RealNet's constant decay (the EMA starts at the pretrained weights).
bf16 autocast on CUDA (RealNet: fp32). One process instead of 4-GPU DDP: ``batch_size`` × ``accumulate``
is the effective batch.

Checkpoints (:func:`baselines.realnet.write_checkpoint`) are swapped in atomically every ``save_every``
optimizer steps: ``unet/`` (EMA), ``scheduler/``, ``train_state.pt`` (raw weights, optimizer, step) and
``realnet.json``. Every random draw depends only on (seed, micro-batch index), so ``resume`` continues
exactly where an interrupted run stopped.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from baselines.realnet import META_FILE, read_checkpoint_meta, write_checkpoint
from cai.errors import ConfigError, DatasetError, MissingFileError
from cai.io import read_image, resize_image
from cai.seeding import torch_generator

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"


# ---------------------------------------------------------------------------------------------------
# Model and schedule
# ---------------------------------------------------------------------------------------------------
def build_unet(ucfg: DictConfig | dict, image_size: int, num_classes: int | None, learn_sigma: bool) -> Any:
    """A diffusers ``UNet2DModel`` shaped like RealNet's ADM UNet (``models/sdas/unets.py::UNetModel``).

    Level ``i`` works at ``image_size / 2**i`` px; levels whose size is in ``attention_resolutions`` get
    self-attention after each res block (ADM ``attention_resolutions``); ``resblock_updown`` uses residual
    blocks for down/up-sampling (ADM ``resblock_updown``).
    """
    from diffusers import UNet2DModel

    widths = [int(w) for w in ucfg["block_out_channels"]]
    attn = {int(r) for r in ucfg["attention_resolutions"]}
    updown = bool(ucfg["resblock_updown"])
    down, up = [], []
    for i in range(len(widths)):
        with_attn = image_size // 2**i in attn
        down.append("AttnDownBlock2D" if with_attn else ("ResnetDownsampleBlock2D" if updown else "DownBlock2D"))
    for kind in reversed(down):
        up.append("AttnUpBlock2D" if kind.startswith("Attn") else ("ResnetUpsampleBlock2D" if updown else "UpBlock2D"))
    return UNet2DModel(
        sample_size=int(image_size),
        in_channels=3,
        out_channels=6 if learn_sigma else 3,
        block_out_channels=tuple(widths),
        layers_per_block=int(ucfg["layers_per_block"]),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        attention_head_dim=int(ucfg["attention_head_dim"]),
        norm_num_groups=int(ucfg["norm_num_groups"]),
        resnet_time_scale_shift=str(ucfg["resnet_time_scale_shift"]),
        downsample_type="resnet" if updown else "conv",
        upsample_type="resnet" if updown else "conv",
        dropout=float(ucfg["dropout"]),
        num_class_embeds=num_classes,
    )


def build_scheduler(cfg: DictConfig | dict) -> Any:
    """``DDPMScheduler`` for RealNet's diffusion: T steps, linear β, x̂₀ clipping, learned or fixed variance."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=int(cfg["num_train_timesteps"]),
        beta_start=float(cfg["beta_start"]),
        beta_end=float(cfg["beta_end"]),
        beta_schedule=str(cfg["beta_schedule"]),
        variance_type="learned_range" if bool(cfg["learn_sigma"]) else "fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
    )


@dataclass
class DiffusionCoefs:
    """Per-timestep constants of the (non-respaced) diffusion, computed in float64, stored float32."""

    sqrt_ac: torch.Tensor
    sqrt_1m_ac: torch.Tensor
    sqrt_recip_ac: torch.Tensor
    sqrt_recipm1_ac: torch.Tensor
    log_betas: torch.Tensor
    post_logvar_clipped: torch.Tensor
    post_coef1: torch.Tensor
    post_coef2: torch.Tensor

    @classmethod
    def from_scheduler(cls, scheduler: Any, device: torch.device) -> DiffusionCoefs:
        betas = scheduler.betas.to(torch.float64)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        post_var_clipped = torch.cat([post_var[1:2], post_var[1:]])  # gauss_sample.py: log(append(pv[1], pv[1:]))
        values = {
            "sqrt_ac": ac.sqrt(), "sqrt_1m_ac": (1.0 - ac).sqrt(), "sqrt_recip_ac": (1.0 / ac).sqrt(),
            "sqrt_recipm1_ac": (1.0 / ac - 1.0).sqrt(), "log_betas": betas.log(),
            "post_logvar_clipped": post_var_clipped.log(),
            "post_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
            "post_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        }
        return cls(**{k: v.float().to(device) for k, v in values.items()})


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return values[t].view(-1, 1, 1, 1)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise (``samples/sample_utils.py::normal_kl``)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data in [−1, 1] under a Gaussian binned at ±1/255 (``sample_utils.py``), in nats."""

    def cdf(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v.pow(3))))

    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def hybrid_loss(
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    c: DiffusionCoefs,
    learn_sigma: bool,
) -> torch.Tensor:
    """Per-sample loss of ``gauss_sample.py::training_losses``: ε-MSE, plus (``learn_sigma``) the VB term in
    bits/dim with the mean frozen, so that only the variance channels learn from it."""
    dims = tuple(range(1, x0.ndim))
    ch = x0.shape[1]
    model_output = model_output.float()
    eps, v = torch.split(model_output, ch, dim=1) if learn_sigma else (model_output, None)
    mse = ((noise - eps) ** 2).mean(dim=dims)
    if v is None:
        return mse
    x0_hat = _at(c.sqrt_recip_ac, t) * x_t - _at(c.sqrt_recipm1_ac, t) * eps.detach()
    model_mean = _at(c.post_coef1, t) * x0_hat + _at(c.post_coef2, t) * x_t
    frac = (v + 1.0) / 2.0
    model_logvar = frac * _at(c.log_betas, t) + (1.0 - frac) * _at(c.post_logvar_clipped, t)
    true_mean = _at(c.post_coef1, t) * x0 + _at(c.post_coef2, t) * x_t
    true_logvar = _at(c.post_logvar_clipped, t)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dim=dims) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dim=dims) / math.log(2.0)
    return mse + torch.where(t == 0, nll, kl)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``utils/misc_helper.py::ema``: every state-dict entry ← decay·ema + (1−decay)·model."""
    src = model.state_dict()
    for key, value in ema.state_dict().items():
        if value.dtype.is_floating_point:
            value.mul_(decay).add_(src[key].to(value.dtype), alpha=1.0 - decay)
        else:
            value.copy_(src[key])


def ema_decay_at(decay: float, warmup: bool, optimizer_steps: int) -> float:
    """Constant ``decay`` (RealNet), or with ``warmup`` min(decay, (1+n)/(10+n)) (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``, diffusers' ``EMAModel.get_decay`` default), which
    lets short from-scratch runs move the EMA off its initial weights."""
    if not warmup:
        return float(decay)
    return min(float(decay), (1.0 + optimizer_steps) / (10.0 + optimizer_steps))


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
@dataclass
class TrainImages:
    """All training images as uint8 (N, 3, H, W) on the CPU, their class labels and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    categories: list[str]


def load_train_images(reader: Any, categories: Sequence[str], size: int) -> TrainImages:
    """Every normal training image of ``categories`` (``reader.load(c).train``), resized to ``size``."""
    arrays, labels = [], []
    for label, category in enumerate(categories):
        paths = reader.load(category).train
        if not paths:
            raise DatasetError(f"RealNet DDPM: category {category!r} has no training images.",
                               where=getattr(reader, "root", None))
        for p in paths:
            arrays.append(resize_image(read_image(p), int(size)))
            labels.append(label)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return TrainImages(images, torch.tensor(labels, dtype=torch.long), list(categories))


def micro_batch(data: TrainImages, seed: int, index: int, batch_size: int, hflip: bool, vflip: bool,
                num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0 in [−1, 1], labels, t, noise) of micro-batch ``index``; a function of (seed, index) only.

    Images are visited in per-epoch permutations (epoch e's order from (seed, 0, e)), like a shuffling
    sampler that continues across epoch boundaries.
    """
    n = len(data.images)
    positions = np.arange(index * batch_size, (index + 1) * batch_size)
    idx = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(positions // n):
        sel = positions // n == epoch
        perm = np.random.default_rng([seed, 0, int(epoch)]).permutation(n)
        idx[sel] = perm[positions[sel] % n]
    x = data.images[torch.from_numpy(idx)].float().div_(127.5).sub_(1.0)
    flips = np.random.default_rng([seed, 2, index]).random((batch_size, 2)) < 0.5
    for j in range(batch_size):
        if hflip and flips[j, 0]:
            x[j] = x[j].flip(-1)
        if vflip and flips[j, 1]:
            x[j] = x[j].flip(-2)
    g = torch_generator(seed, 1, index)
    t = torch.randint(num_train_timesteps, (batch_size,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    return x, data.labels[torch.from_numpy(idx)], t, noise


# ---------------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Where the checkpoint is, how many optimizer steps it holds, the last loss and the time taken."""

    output_dir: Path
    step: int
    last_loss: float | None
    seconds: float


_INIT_FIX = ("put a diffusers UNet2DModel folder (config.json + weights; e.g. OpenAI's ImageNet 256x256 ADM "
             "converted to diffusers) or a checkpoint folder of scripts/train_realnet_ddpm.py there, or set "
             "realnet_ddpm.init_checkpoint=null to train from scratch (README: Models and weights).")


def init_from_checkpoint(unet: Any, path: str | Path) -> int:
    """Copy every weight of ``path`` whose name and shape match into ``unet`` (RealNet ``load_pertrain_weights``);
    returns how many tensors were copied.

    ``path``: a diffusers ``UNet2DModel`` folder, or a checkpoint folder of this project (its ``unet/``).
    A missing path or an OpenAI ``.pt`` file is a :class:`ConfigError` (not converted here)."""
    from diffusers import UNet2DModel

    path = Path(str(path))
    if path.is_file():
        raise ConfigError(f"realnet_ddpm.init_checkpoint is a file ({path.suffix}); OpenAI guided-diffusion .pt "
                          "checkpoints are not converted to diffusers' UNet2DModel by this project.",
                          where=path, fix=_INIT_FIX)
    if not path.is_dir():
        raise ConfigError("realnet_ddpm.init_checkpoint not found.", where=path, fix=_INIT_FIX)
    folder = path / "unet" if (path / META_FILE).is_file() and (path / "unet").is_dir() else path
    if not (folder / "config.json").is_file():
        raise ConfigError("realnet_ddpm.init_checkpoint holds no UNet2DModel (no config.json).", where=folder,
                          fix=_INIT_FIX)
    src = UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False).state_dict()
    own = unet.state_dict()
    matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ConfigError("realnet_ddpm.init_checkpoint shares no weight (name and shape) with the configured UNet.",
                          where=folder, fix="use a checkpoint of the same architecture (e.g. realnet_ddpm=adm256).")
    own.update(matched)
    unet.load_state_dict(own)
    log.info("init_checkpoint %s: %d of %d tensors copied", folder, len(matched), len(own))
    return len(matched)


def ema_warmup_enabled(cfg: DictConfig) -> bool:
    """``realnet_ddpm.ema_warmup``: true / false, or auto = warm up when training from scratch."""
    value = cfg.ema_warmup
    if isinstance(value, str):
        if value != "auto":
            raise ConfigError(f"realnet_ddpm.ema_warmup={value!r}", fix="use true, false or auto.")
        return not cfg.get("init_checkpoint")
    return bool(value)


def _meta(cfg: DictConfig, dataset: str, categories: list[str], step: int) -> dict[str, Any]:
    return {"dataset": dataset, "categories": categories, "image_size": int(cfg.image_size),
            "learn_sigma": bool(cfg.learn_sigma), "step": int(step), "setting": cfg.get("name"),
            "trained_by": "scripts/train_realnet_ddpm.py"}


def train_realnet_ddpm(cfg: DictConfig, reader: Any, dataset: str, seed: int, device: torch.device) -> TrainResult:
    """Train (or resume) the dataset's SDAS DDPM as configured by the ``realnet_ddpm`` section ``cfg``."""
    start = time.perf_counter()
    out = Path(str(cfg.output_dir))
    categories = [str(c) for c in (cfg.categories or reader.categories())]
    unknown = [c for c in categories if c not in reader.categories()]
    if unknown or not categories:
        raise ConfigError(f"realnet_ddpm.categories {unknown or categories} are not categories of {dataset}.",
                          fix=f"choose from {reader.categories()} or set realnet_ddpm.categories=null.")
    if int(cfg.save_every) < 1 or int(cfg.accumulate) < 1 or int(cfg.batch_size) < 1:
        raise ConfigError("realnet_ddpm.save_every, accumulate and batch_size must be at least 1.")
    learn_sigma = bool(cfg.learn_sigma)
    size = int(cfg.image_size)
    unet = build_unet(cfg.unet, size, len(categories), learn_sigma)
    if cfg.get("init_checkpoint"):
        init_from_checkpoint(unet, cfg.init_checkpoint)
    warmup = ema_warmup_enabled(cfg)
    unet.to(device).train()
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    scheduler = build_scheduler(cfg)
    coefs = DiffusionCoefs.from_scheduler(scheduler, device)
    optimizer = torch.optim.Adam(unet.parameters(), lr=float(cfg.lr), betas=tuple(cfg.adam_betas),
                                 weight_decay=float(cfg.weight_decay))
    step = 0
    meta = read_checkpoint_meta(out)
    if meta is not None and bool(cfg.resume):
        step = _resume(out, meta, cfg, dataset, categories, unet, ema, optimizer, device)
    elif meta is not None:
        log.warning("resume=false: the checkpoint in %s will be overwritten at the first save", out)
    if step >= int(cfg.max_steps):
        log.info("RealNet DDPM in %s already has %d of %d steps", out, step, int(cfg.max_steps))
        return TrainResult(out, step, None, time.perf_counter() - start)

    data = load_train_images(reader, categories, size)
    log.info("RealNet DDPM: %d images of %d categories at %d px, %.1fM parameters, from step %d to %d on %s",
             len(data.images), len(categories), size, sum(p.numel() for p in unet.parameters()) / 1e6,
             step, int(cfg.max_steps), device)
    use_bf16 = str(cfg.mixed_precision) == "bf16" and device.type == "cuda"
    acc, bs, T = int(cfg.accumulate), int(cfg.batch_size), int(cfg.num_train_timesteps)
    last_loss = None
    while step < int(cfg.max_steps):
        losses = []
        for k in range(acc):
            x0, labels, t, noise = micro_batch(data, seed, step * acc + k, bs, bool(cfg.hflip), bool(cfg.vflip), T)
            x0, labels, t, noise = x0.to(device), labels.to(device), t.to(device), noise.to(device)
            x_t = _at(coefs.sqrt_ac, t) * x0 + _at(coefs.sqrt_1m_ac, t) * noise
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                pred = unet(x_t, t, class_labels=labels).sample
            loss = hybrid_loss(pred, x0, x_t, t, noise, coefs, learn_sigma).mean()
            loss.backward()  # summed over micro-batches, clipped after each backward, as train_diffusion.py
            if cfg.clip_max_norm:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), float(cfg.clip_max_norm))
            losses.append(float(loss.detach()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, unet, ema_decay_at(float(cfg.ema_decay), warmup, step))
        step += 1
        last_loss = float(np.mean(losses))
        if step % int(cfg.log_every) == 0 or step == 1:
            log.info("step %d/%d loss %.4f (%.1fs)", step, int(cfg.max_steps), last_loss, time.perf_counter() - start)
        if step % int(cfg.save_every) == 0 or step == int(cfg.max_steps):
            save(out, cfg, dataset, categories, unet, ema, scheduler, optimizer, step)
    return TrainResult(out, step, last_loss, time.perf_counter() - start)


def save(out: Path, cfg: DictConfig, dataset: str, categories: list[str], unet: Any, ema: Any, scheduler: Any,
         optimizer: torch.optim.Optimizer, step: int) -> None:
    """Atomically write the checkpoint: EMA UNet + scheduler (for sampling) and the resume state."""

    def extra(tmp: Path) -> None:
        torch.save({"model": unet.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "config": OmegaConf.to_container(cfg, resolve=True)}, tmp / TRAIN_STATE)

    write_checkpoint(out, ema, scheduler, _meta(cfg, dataset, categories, step), extra)
    log.info("saved RealNet DDPM checkpoint (step %d) to %s", step, out)


def _resume(out: Path, meta: dict, cfg: DictConfig, dataset: str, categories: list[str], unet: Any, ema: Any,
            optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    from diffusers import UNet2DModel

    want = _meta(cfg, dataset, categories, 0)
    for key in ("dataset", "categories", "image_size", "learn_sigma"):
        if meta.get(key) != want[key]:
            raise ConfigError(
                f"Cannot resume the RealNet DDPM in {out}: its {key} is {meta.get(key)!r}, the config asks for "
                f"{want[key]!r}.",
                where=out / META_FILE,
                fix="use the same settings, another realnet_ddpm.output_dir, or realnet_ddpm.resume=false to "
                "start over (the old checkpoint is then overwritten).",
            )
    state_path = out / TRAIN_STATE
    if not state_path.is_file():
        raise MissingFileError("RealNet DDPM checkpoint has no resume state.", where=state_path,
                               fix="set realnet_ddpm.resume=false to train from scratch.")
    state = torch.load(state_path, map_location=device, weights_only=False)
    unet.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    saved = UNet2DModel.from_pretrained(out / "unet", local_files_only=True, low_cpu_mem_usage=False)
    ema.load_state_dict(saved.state_dict())
    ema.to(device)
    log.info("resuming RealNet DDPM from step %d (%s)", int(state["step"]), out)
    return int(state["step"])


def run(cfg: DictConfig, run_dir: Path) -> TrainResult:
    """Entry point body of ``scripts/train_realnet_ddpm.py``: build the reader, pick the device, train."""
    from hydra.utils import instantiate

    from cai.detect.trainer import resolve_device
    from cai.seeding import seed_everything

    seed_everything(int(cfg.seed))
    reader = instantiate(cfg.dataset.reader)
    device = resolve_device(str(cfg.device))
    result = train_realnet_ddpm(cfg.realnet_ddpm, reader, str(cfg.dataset.name), int(cfg.seed), device)
    log.info("RealNet DDPM: %d steps in %s (%.0fs this run)", result.step, result.output_dir, result.seconds)
    return result
