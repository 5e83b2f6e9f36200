"""RealNet's pseudo anomalies: SDAS images (strength-controllable diffusion anomaly synthesis) pasted
through a Perlin mask.

Zhang, Xu, Zhou, "RealNet: A Feature Selection Network with Realistic Synthetic Anomaly for Anomaly
Detection", CVPR 2024; code cnulab/RealNet (read at ab75012):

* ``sample.py`` + ``experiments/<dataset>/sample.yaml``: SDAS images are sampled *offline*, per category,
  from one class-conditional diffusion UNet per dataset (the categories are its classes), in batches of 16
  that share one strength ``s ~ U(0.1, 0.2)``, starting from pure noise, converted to uint8 by truncation
  and saved as JPEG into ``data/<dataset>/sdas/<category>/``.
* ``samples/spaced_sample.py`` + ``samples/sample_utils.py``: the 1000-step linear-β DDPM is respaced to
  20 steps with the "ddim20" stride (timesteps 950, 900, …, 0; the betas are recomputed from ᾱ).
* ``samples/gauss_sample.py::p_sample``: one ancestral step is
  ``x_{t-1} = μ_θ(x_t) + 1[t≠0] · exp(½ log σ²_θ) · z · √(1+s)``: the *standard deviation* of the added
  noise is multiplied by √(1+s), i.e. the variance by (1+s); the mean is untouched. σ²_θ is the model's
  learned variance (``learn_sigma: True``: log-interpolation between the posterior variance β̃_t and β_t).
* ``datasets/realnet_dataset.py::RealNetDataset``: with ``anomaly_types {normal: 0.5, sdas: 0.5}`` a training
  sample is either left normal or gets ``mask = Perlin (DRAEM recipe, not redrawn when empty) × foreground``
  and ``img' = m·(f·sdas + (1−f)·img) + (1−m)·img``, ``f ~ U(0.5, 1)`` (``sdas_transparency_range``), with a
  uniformly drawn image of the category's SDAS folder, ``cv2.resize``-d to the image size.

So, as RealNet does, this synthesizer draws the SDAS image from a per-category *pool* sampled once (in
``prepare``, from a seed of its own; optionally cached on disk) instead of running the diffusion model
per call; ``__call__`` is then cheap numpy. ``sdas_dir`` can point at a folder in RealNet's own layout
(``<sdas_dir>/<category>/*.jpg``, e.g. the SDAS images the authors released) to skip the DDPM entirely.

Not ported: the optional noisy-image classifier guidance of ``sample.py`` (``cond_fn``, scale 1.0, a
classifier fine-tuned from OpenAI's 256×256 ImageNet classifier; the README calls it optional). The DDPM
is a diffusers ``UNet2DModel`` trained by ``scripts/train_realnet_ddpm.py`` (see
:mod:`baselines.realnet_train`), not RealNet's ADM checkpoint, which needs a weight conversion.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from baselines.perlin import perlin_threshold_mask
from baselines.textures import blend_texture
from cai.errors import ConfigError, MissingFileError
from cai.io import list_images, read_image, write_json
from cai.synth.base import SynthesisContext, Synthesizer

log = logging.getLogger(__name__)

META_FILE = "realnet.json"  # written last into a checkpoint: its presence means the checkpoint is complete
CHECKPOINT_FORMAT = 1
POOL_FORMAT = 1
VARIANCE_TYPES = ("fixed_small", "learned_range")
TRAIN_SCRIPT = "scripts/train_realnet_ddpm.py"


# ---------------------------------------------------------------------------------------------------
# Checkpoint layout: <dir>/unet (EMA weights), <dir>/scheduler, <dir>/train_state.pt (resume), realnet.json
# ---------------------------------------------------------------------------------------------------
def _old_path(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.old")


def recover_checkpoint(directory: str | Path) -> None:
    """Finish a checkpoint swap that was interrupted between its two renames (see :func:`write_checkpoint`)."""
    directory = Path(directory)
    old = _old_path(directory)
    if not directory.exists() and old.is_dir():
        os.replace(old, directory)


def write_checkpoint(
    directory: str | Path,
    unet: torch.nn.Module,
    scheduler: Any,
    meta: dict[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write a complete checkpoint into a temporary sibling folder, then swap it in.

    ``unet``/``scheduler`` go through diffusers ``save_pretrained``; ``extra(tmp_dir)`` may add files (the
    trainer's resume state); :data:`META_FILE` is written last. The old checkpoint is renamed aside before
    the new one is renamed into place and removed after, so a crash leaves either the old or the new one
    (:func:`recover_checkpoint` repairs the one window where only the renamed-aside copy exists).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_checkpoint(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        if extra is not None:
            extra(tmp)
        write_json(tmp / META_FILE, {"format": CHECKPOINT_FORMAT, **meta})
        old = _old_path(directory)
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any] | None:
    """The checkpoint's ``realnet.json``, or None when there is no complete checkpoint."""
    directory = Path(directory)
    recover_checkpoint(directory)
    path = directory / META_FILE
    if not (path.is_file() and (directory / "unet").is_dir() and (directory / "scheduler").is_dir()):
        return None
    return json.loads(path.read_text())


def train_command(dataset: str, directory: str | Path) -> str:
    """The command that trains (or resumes) the DDPM a RealNet checkpoint folder should hold."""
    return f"python {TRAIN_SCRIPT} dataset={dataset} realnet_ddpm.output_dir={directory}"


def missing_checkpoint_error(directory: str | Path, dataset: str) -> MissingFileError:
    return MissingFileError(
        f"RealNet samples its SDAS anomaly sources from a diffusion model trained on the normal training "
        f"images of dataset {dataset!r}, but no complete checkpoint (unet/, scheduler/, {META_FILE}) was found.",
        where=directory,
        fix=(
            f"train it: `{train_command(dataset, directory)}` (writes unet/, scheduler/, train_state.pt and "
            f"{META_FILE} into that folder; add `realnet_ddpm=adm256` for the paper-scale ADM UNet on a GPU; "
            f"rerun the same command to resume). Or set the synthesizer's params.sdas_dir to a folder of "
            f"SDAS images in RealNet's layout <sdas_dir>/<category>/*.jpg. RealNet's own ADM checkpoints "
            f"(.pt) cannot be loaded here, and none exists for KSDD2."
        ),
    )


def load_sdas_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, dict]:
    """Load (UNet2DModel, DDPMScheduler, meta) from a checkpoint folder; local files only."""
    from diffusers import DDPMScheduler, UNet2DModel

    meta = read_checkpoint_meta(directory)
    if meta is None:
        raise missing_checkpoint_error(directory, "<dataset>")
    directory = Path(directory)
    unet = UNet2DModel.from_pretrained(directory / "unet", local_files_only=True, low_cpu_mem_usage=False)
    unet = unet.to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(directory / "scheduler", local_files_only=True)
    return unet, scheduler, meta


# ---------------------------------------------------------------------------------------------------
# The SDAS sampler
# ---------------------------------------------------------------------------------------------------
def ddim_stride_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Respaced timesteps, descending: RealNet ``samples/sample_utils.py::space_timesteps("ddimN")``.

    The smallest integer stride ``k`` with ``len(range(0, T, k)) == N``; for T = 1000, N = 20 that is
    950, 900, …, 50, 0.
    """
    t, n = int(num_train_timesteps), int(num_steps)
    for stride in range(1, t + 1):
        if len(range(0, t, stride)) == n:
            return list(range(0, t, stride))[::-1]
    raise ConfigError(
        f"RealNet cannot respace {t} diffusion steps to exactly {n} with an integer stride "
        f"(space_timesteps('ddim{n}')).",
        fix="choose num_inference_steps such that some integer stride k gives ceil(T / k) == steps (e.g. 20).",
    )


def alphas_cumprod64(scheduler: Any) -> torch.Tensor:
    """ᾱ in float64 from the scheduler's betas (RealNet's ``GaussianDiffusionBeatGans`` uses float64)."""
    return torch.cumprod(1.0 - scheduler.betas.to(torch.float64), dim=0)


@dataclass
class SdasStep:
    """One reverse step: the new sample, the model mean μ, the (uninflated) std σ, the clipped x̂₀."""

    sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    pred_x0: torch.Tensor


def sdas_step(
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: int,
    prev_t: int,
    alphas_cumprod: torch.Tensor,
    s: float,
    noise: torch.Tensor | None,
    variance_type: str,
) -> SdasStep:
    """``gauss_sample.py::p_sample`` on a respaced chain (``t`` → ``prev_t``; ``prev_t < 0`` is the last step).

    ε-prediction, x̂₀ clipped to [−1, 1], posterior mean; σ² = the posterior variance β̃ (``fixed_small``) or
    ``exp(frac·log β + (1−frac)·log β̃)`` with ``frac = (v+1)/2`` from the model's extra channels
    (``learned_range``, RealNet's ``learn_sigma``); then ``x = μ + σ·z·√(1+s)``, no noise on the last step.
    """
    c = x.shape[1]
    if variance_type == "learned_range":
        if model_output.shape[1] != 2 * c:
            raise ConfigError(f"variance_type learned_range needs a UNet with {2 * c} output channels, "
                              f"got {model_output.shape[1]}.")
        eps, v = torch.split(model_output, c, dim=1)
    elif variance_type == "fixed_small":
        eps, v = model_output[:, :c], None
    else:
        raise ConfigError(f"RealNet's sampler supports variance_type {VARIANCE_TYPES}, got {variance_type!r}.")
    a_t = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
    beta = 1.0 - a_t / a_prev
    eps = eps.float()
    pred_x0 = (math.sqrt(1.0 / a_t) * x - math.sqrt(1.0 / a_t - 1.0) * eps).clamp(-1.0, 1.0)
    coef1 = beta * math.sqrt(a_prev) / (1.0 - a_t)
    coef2 = (1.0 - a_prev) * math.sqrt(1.0 - beta) / (1.0 - a_t)
    mean = coef1 * pred_x0 + coef2 * x
    post_var = max(beta * (1.0 - a_prev) / (1.0 - a_t), 1e-20)
    if v is None:
        std = torch.full_like(x, math.sqrt(post_var))
    else:
        frac = (v.float() + 1.0) / 2.0
        std = torch.exp(0.5 * (frac * math.log(beta) + (1.0 - frac) * math.log(post_var)))
    last = prev_t < 0 or noise is None
    sample = mean if last else mean + std * noise * math.sqrt(1.0 + float(s))  # the SDAS inflation
    return SdasStep(sample, mean, std, pred_x0)


@torch.no_grad()
def sdas_sample(
    unet: Callable[..., Any],
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    x_T: torch.Tensor,
    s: float,
    generator: torch.Generator,
    variance_type: str,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDAS ancestral sampling (``gauss_sample.py::p_sample_loop``) from ``x_T``; returns x₀ in [−1, 1].

    ``unet(x, t, class_labels=…)`` is a diffusers ``UNet2DModel``; ``timesteps`` are the respaced ones,
    descending (:func:`ddim_stride_timesteps`). Per non-final step one ``torch.randn`` of ``x``'s shape is
    drawn from ``generator`` on the generator's device and moved to ``x``'s (the order diffusers'
    ``DDPMScheduler.step`` uses, so with ``s = 0`` both give the same chain). ``s = 0`` is plain DDPM.
    """
    x = x_T.float()
    gen_device = generator.device
    steps = list(timesteps)
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else -1
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        kwargs = {"class_labels": class_labels} if class_labels is not None else {}
        out = unet(x, tt, **kwargs).sample.float()
        noise = None
        if prev_t >= 0:
            noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32).to(x.device)
        x = sdas_step(out, x, int(t), prev_t, alphas_cumprod, s, noise, variance_type).sample
    return x


def to_uint8_truncated(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [−1, 1] → uint8 (B, H, W, 3) as ``sample.py``: ``clip((x+1)·127.5).astype(uint8)``."""
    arr = ((x.float().cpu() + 1.0) * 127.5).clamp(0.0, 255.0).permute(0, 2, 3, 1).numpy()
    return arr.astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    """PIL JPEG encoding (``Image.save(path.jpg)`` in ``sample.py``; PIL's default quality is 75)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes as RGB uint8 with OpenCV (RealNet reads SDAS files with ``cv2.imread``)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[:, :, ::-1])


def _stable_key(text: str) -> int:
    return zlib.crc32(text.encode())


def pool_generator_seeds(seed: int, dataset: str, category: str) -> tuple[np.random.Generator, torch.Generator]:
    """The pool's own generators: numpy for the strengths, torch (CPU) for the noise; stable per target."""
    base = [int(seed), _stable_key(dataset), _stable_key(category)]
    rng = np.random.default_rng([*base, 0])
    state = np.random.SeedSequence([*base, 1]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return rng, gen


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU (as the detector trainer does)."""
    from cai.detect.trainer import resolve_device as _resolve

    return _resolve(str(name))


# ---------------------------------------------------------------------------------------------------
# The synthesizer
# ---------------------------------------------------------------------------------------------------
@dataclass
class RealNetSample:
    """One RealNet draw and the random choices behind it (for tests and inspection)."""

    image: np.ndarray
    mask: np.ndarray
    left_normal: bool
    factor: float | None = None  # f: weight of the SDAS image inside the mask
    pool_index: int | None = None


class RealNet(Synthesizer):
    """RealNet's SDAS anomaly synthesis (``datasets/realnet_dataset.py`` with ``anomaly_types`` normal/sdas).

    ``prepare`` builds the category's SDAS pool: ``pool_size`` images sampled in batches of
    ``pool_batch_size`` (one ``s ~ U(strength_range)`` per batch, as ``sample.py``) with
    ``num_inference_steps`` respaced ancestral steps, class label = the category's index in the checkpoint,
    uint8 by truncation, JPEG round trip at ``pool_jpeg_quality`` (``null`` keeps them lossless). The pool
    depends only on (checkpoint, these settings, ``seed``, dataset, category); it is cached as files under
    ``pool_cache_dir/<dataset>/<category>-<hash>/`` unless that is ``null``. With ``sdas_dir`` set, the pool
    is instead every image in ``<sdas_dir>/<category>/`` and no checkpoint is needed.

    Per call: with probability ``normal_probability`` the sample is left normal (all-False mask; not drawn
    when the context says the consumer mixes normals itself, ``SynthesisContext.mixes_normals``); otherwise
    mask = Perlin (:func:`baselines.perlin.perlin_threshold_mask`, DRAEM's recipe) ∧ foreground, kept even
    when empty (then the image is unchanged); a pool image drawn uniformly, resized to the image with
    ``cv2.resize`` (bilinear); ``f ~ U(blend_range)``; ``img' = m·(f·sdas + (1−f)·img) + (1−m)·img``
    (:func:`baselines.textures.blend_texture` with β = 1 − f; rounded where RealNet truncates, ≤ 1 grey level).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        dataset: str,
        num_inference_steps: int,
        strength_range: Sequence[float],
        pool_size: int,
        pool_batch_size: int,
        pool_jpeg_quality: int | None,
        pool_cache_dir: str | Path | None,
        sdas_dir: str | Path | None,
        blend_range: Sequence[float],
        normal_probability: float,
        perlin_scale_exp: Sequence[int],
        perlin_rotate: Sequence[float],
        perlin_threshold: float,
        seed: int,
        device: str = "auto",
        require_setting: str | None = None,
    ) -> None:
        self.checkpoint = Path(str(checkpoint))
        self.require_setting = None if require_setting is None else str(require_setting)
        self.dataset = str(dataset)
        self.num_inference_steps = int(num_inference_steps)
        self.strength_range = (float(strength_range[0]), float(strength_range[1]))
        self.pool_size = int(pool_size)
        self.pool_batch_size = int(pool_batch_size)
        self.pool_jpeg_quality = None if pool_jpeg_quality is None else int(pool_jpeg_quality)
        self.pool_cache_dir = None if pool_cache_dir is None else Path(str(pool_cache_dir))
        self.sdas_dir = None if sdas_dir is None else Path(str(sdas_dir))
        self.blend_range = (float(blend_range[0]), float(blend_range[1]))
        self.normal_probability = float(normal_probability)
        self.mixes_normals = False  # set by prepare: the consumer mixes normals, never leave one normal
        self.perlin_scale_exp = tuple(int(v) for v in perlin_scale_exp)
        self.perlin_rotate = tuple(float(v) for v in perlin_rotate)
        self.perlin_threshold = float(perlin_threshold)
        self.seed = int(seed)
        self.device = str(device)
        if self.pool_size < 1 or self.pool_batch_size < 1:
            raise ConfigError("RealNet pool_size and pool_batch_size must be at least 1.")
        if not 0.0 <= self.blend_range[0] <= self.blend_range[1] <= 1.0:
            raise ConfigError(f"RealNet blend_range {list(self.blend_range)} must lie in [0, 1], low ≤ high.")
        self.pool: list[np.ndarray] = []
        self.pool_strengths: list[float] = []
        self.category: str | None = None
        self.meta: dict[str, Any] | None = None
        if self.sdas_dir is None:
            self.meta = read_checkpoint_meta(self.checkpoint)
            if self.meta is None:
                raise missing_checkpoint_error(self.checkpoint, self.dataset)

    # -- the pool ----------------------------------------------------------------------------------
    def prepare(self, context: SynthesisContext) -> None:
        """Build (or load) the category's SDAS pool; keep the authors' normal draws only when no consumer
        mixes normal images in itself."""
        self.category = context.category
        self.mixes_normals = bool(context.mixes_normals)
        if self.sdas_dir is not None:
            self.pool, self.pool_strengths = self._read_sdas_dir(context.category), []
            return
        meta = self.meta
        if meta.get("dataset") != context.dataset:
            raise ConfigError(
                f"RealNet checkpoint was trained on dataset {meta.get('dataset')!r}, not {context.dataset!r}.",
                where=self.checkpoint,
                fix=f"point params.checkpoint at the {context.dataset} checkpoint or train it: "
                f"`{train_command(context.dataset, self.checkpoint)}`",
            )
        if self.require_setting is not None and meta.get("setting") != self.require_setting:
            raise ConfigError(
                f"This run needs the RealNet DDPM trained with realnet_ddpm={self.require_setting} (the paper's "
                f"scale), but the checkpoint was trained with {meta.get('setting') or 'an unrecorded setting'}.",
                where=self.checkpoint,
                fix=f"train it: `{train_command(context.dataset, self.checkpoint)} "
                f"realnet_ddpm={self.require_setting}` (README: Models and weights), or drop the requirement "
                f"with realnet_setting=null",
            )
        if context.category not in meta["categories"]:
            raise ConfigError(
                f"RealNet checkpoint has no class for category {context.category!r} "
                f"(trained on {meta['categories']}).",
                where=self.checkpoint,
                fix=f"retrain with that category included: `{train_command(context.dataset, self.checkpoint)}`",
            )
        cache = self._pool_cache(context)
        if cache is not None and (cache / "pool.json").is_file():
            self.pool, self.pool_strengths = self._read_pool(cache)
            log.info("RealNet: reusing %d SDAS images from %s", len(self.pool), cache)
            return
        encoded, strengths = self.sample_pool(context.dataset, context.category)
        if cache is not None:
            self._write_pool(cache, encoded, strengths, context.dataset, context.category)
        self.pool = [decode_image_bytes(b) for b in encoded]
        self.pool_strengths = strengths

    def cache_key(self) -> dict[str, Any]:
        """The loaded checkpoint's metadata (training step, ...) or the SDAS folder: retraining into the
        same checkpoint path must not reuse pseudo anomalies of the old model."""
        return {"checkpoint_meta": self.meta, "sdas_dir": None if self.sdas_dir is None else str(self.sdas_dir)}

    def pool_key(self, dataset: str, category: str) -> dict[str, Any]:
        """What the pool depends on (hashed into its cache folder name)."""
        return {
            "format": POOL_FORMAT, "checkpoint": str(self.checkpoint.resolve()), "checkpoint_meta": self.meta,
            "dataset": dataset, "category": category, "num_inference_steps": self.num_inference_steps,
            "strength_range": list(self.strength_range), "pool_size": self.pool_size,
            "pool_batch_size": self.pool_batch_size, "pool_jpeg_quality": self.pool_jpeg_quality,
            "seed": self.seed,
        }

    def _pool_cache(self, context: SynthesisContext) -> Path | None:
        if self.pool_cache_dir is None:
            return None
        key = json.dumps(self.pool_key(context.dataset, context.category), sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.pool_cache_dir / context.dataset / f"{context.category}-{digest}"

    def sample_pool(self, dataset: str, category: str) -> tuple[list[bytes], list[float]]:
        """Sample the pool with the DDPM: encoded images (JPEG or PNG bytes) and each image's strength s."""
        device = resolve_device(self.device)
        unet, scheduler, meta = load_sdas_model(self.checkpoint, device)
        variance_type = scheduler.config.variance_type
        timesteps = ddim_stride_timesteps(scheduler.config.num_train_timesteps, self.num_inference_steps)
        acp = alphas_cumprod64(scheduler)
        label = meta["categories"].index(category)
        size = int(unet.config.sample_size)
        rng, gen = pool_generator_seeds(self.seed, dataset, category)
        encoded: list[bytes] = []
        strengths: list[float] = []
        log.info("RealNet: sampling %d SDAS images for %s/%s on %s", self.pool_size, dataset, category, device)
        while len(encoded) < self.pool_size:
            b = min(self.pool_batch_size, self.pool_size - len(encoded))
            s = float(rng.uniform(*self.strength_range))
            x_T = torch.randn((b, unet.config.in_channels, size, size), generator=gen).to(device)
            labels = None
            if unet.config.num_class_embeds is not None:
                labels = torch.full((b,), label, dtype=torch.long, device=device)
            x0 = sdas_sample(unet, acp, timesteps, x_T, s, gen, variance_type, labels)
            for img in to_uint8_truncated(x0):
                encoded.append(self._encode(img))
                strengths.append(s)
        del unet
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return encoded, strengths

    def _encode(self, img: np.ndarray) -> bytes:
        if self.pool_jpeg_quality is not None:
            return jpeg_bytes(img, self.pool_jpeg_quality)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
        if not ok:
            raise OSError("PNG encoding of an SDAS image failed")
        return buf.tobytes()

    def _suffix(self) -> str:
        return ".jpg" if self.pool_jpeg_quality is not None else ".png"

    def _write_pool(
        self, cache: Path, encoded: list[bytes], strengths: list[float], dataset: str, category: str
    ) -> None:
        """Write the pool into a temporary sibling folder (``pool.json`` last) and rename it into place."""
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
        try:
            for i, data in enumerate(encoded):
                (tmp / f"{i:05d}{self._suffix()}").write_bytes(data)
            write_json(tmp / "pool.json", {**self.pool_key(dataset, category), "strengths": strengths})
            if cache.exists():
                shutil.rmtree(cache)
            os.replace(tmp, cache)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _read_pool(self, cache: Path) -> tuple[list[np.ndarray], list[float]]:
        strengths = [float(v) for v in json.loads((cache / "pool.json").read_text())["strengths"]]
        files = sorted(cache.glob(f"[0-9]*{self._suffix()}"))
        if len(files) != len(strengths):
            raise MissingFileError(f"RealNet SDAS pool cache is incomplete ({len(files)} of {len(strengths)} "
                                   "images).", where=cache, fix="delete that folder; it is rebuilt on the next run.")
        return [decode_image_bytes(p.read_bytes()) for p in files], strengths

    def _read_sdas_dir(self, category: str) -> list[np.ndarray]:
        folder = self.sdas_dir / category
        paths = list_images(folder)
        if not paths:
            raise MissingFileError(
                f"RealNet sdas_dir has no SDAS images for category {category!r}.",
                where=folder,
                fix="put that category's SDAS images (RealNet layout <sdas_dir>/<category>/*.jpg) there, or "
                f"set params.sdas_dir=null to sample them from a checkpoint ({TRAIN_SCRIPT}).",
            )
        return [read_image(p) for p in paths]

    # -- synthesis ---------------------------------------------------------------------------------
    def synthesize(self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator) -> RealNetSample:
        """Run one draw and return it with its random choices."""
        if not self.pool:
            raise ConfigError("RealNet.prepare() must run before synthesis (it builds the SDAS pool).")
        h, w = image.shape[:2]
        if not self.mixes_normals and rng.random() < self.normal_probability:
            return RealNetSample(image.copy(), np.zeros((h, w), dtype=bool), left_normal=True)
        mask = perlin_threshold_mask(
            (h, w), rng, self.perlin_scale_exp, self.perlin_rotate, self.perlin_threshold
        ) & foreground.astype(bool)
        index = int(rng.integers(len(self.pool)))
        sdas = self.pool[index]
        if sdas.shape[:2] != (h, w):
            sdas = cv2.resize(sdas, (w, h), interpolation=cv2.INTER_LINEAR)
        factor = float(rng.uniform(*self.blend_range))
        out = blend_texture(image, sdas, mask, beta=1.0 - factor)
        return RealNetSample(out, mask, False, factor, index)

    def __call__(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.synthesize(image, foreground, rng)
        return s.image, s.mask

    def generate_records(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, n: int
    ) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """``generate`` with provenance per output: left normal or the SDAS pool index, its s, and f."""
        records = []
        for _ in range(n):
            d = self.synthesize(image, foreground, rng)
            info: dict[str, Any] = {"left_normal": d.left_normal}
            if not d.left_normal:
                info.update(sdas_index=d.pool_index, blend_factor=round(float(d.factor), 6))
                if self.pool_strengths:
                    info["sdas_strength"] = round(self.pool_strengths[d.pool_index], 6)
            records.append((d.image, d.mask, info))
        return records
