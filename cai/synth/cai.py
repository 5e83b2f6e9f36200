"""CAI-N / CAI-M: Cross-domain Anomaly Injection (paper §3.1, Algorithm 1, Eq. 1-4).

One pseudo anomaly = draw a real anomaly from the bank, pick its scale (STM + MAS), resize it, pick
where it goes (ILS), inject it by Poisson editing (PE) and label it (Eq. 4). Official reference:
``HU13-SVG/Cross-domain-Anomaly-Injection``, ``CAI/multiprocess_of_CAI.py`` (``get_ano_poisson``,
``transform_image``) and ``CAI/CAI_utils_functions.py``. Every constant is a config value
(``conf/synthesizer/cai_{n,m}.yaml``, ``conf/scale``, ``conf/ablation``, ``conf/daad``).

Steps and where they live:

* **STM** (Eq. 1, Alg. 1 l. 5-6): ``R = s_a / s_f`` with ``s_a`` the longest side of the source mask's
  bounding box (source pixels) and ``s_f`` the longest side of the target foreground's bounding box
  (target pixels). ``R < stm.trivial_below`` is discarded. A pattern may serve a scale type only if
  ``R`` reaches that type's lower bound (large ≥ 0.7, medium ≥ 0.3, small ≥ 0.1).
* **MAS** (Alg. 1 l. 7-23): the largest allowed scale whose quota is not yet met is used; a pattern
  whose allowed scales are all full is skipped and another drawn. Algorithm 1 as printed tests
  ``N_l < C_l`` (never true at the start); the intent (§3.1 MAS, and the official code) is "while the
  quota is not met", i.e. ``C_l < N_l``, which is what is implemented. ``R' ~ U(range)``, rounded to
  ``stm.round_decimals`` decimals like the official ``gen_Large``/``gen_Medium``/``gen_Small`` (so
  R' can land on a range's closed end, e.g. 0.3 for "small"; the output keeps its quota bucket).
* **Resize** (Alg. 1 l. 24): by ``r = R'/R`` with ``stm.resize.{shrink,grow}`` rules: shrinking
  averages areas (PIL's bicubic, used officially, is anti-aliased when shrinking; cv2's is not) and
  keeps mask pixels with any coverage (like the official nonzero test, so thin cracks survive);
  enlarging interpolates (bicubic image, linear mask cut at 0.5, so the mask does not ring wider).
* **ILS** (Eq. 2): the centre ``l = (h, w)`` of the resized pattern's bounding box is drawn uniformly
  from foreground pixels for which the whole box lies inside the image (row prefix sums of the
  foreground give the count and the k-th candidate in O(H)). When no such pixel exists the pattern is
  shrunk by ``ils.shrink_factor`` steps (not below its scale's lower bound) until one does; failing
  that, the centre is drawn from every in-image position (foreground ignored); failing that (pattern
  larger than the image) the draw is retried with another pattern.
* **PE** (Eq. 3): clone mask = resized mask closed (``clone.close_kernel``²) then dilated
  (``clone.dilate_kernel``²) (official ``dilate_image``); Poisson editing NORMAL (CAI-N) or MIXED
  (CAI-M) through :func:`cai.synth.blend.seamless_clone` on aligned windows, so the pattern lands
  exactly where ILS put it (no ``seamlessClone`` centre arithmetic and no border clash: the source
  window is clipped to the image). ``clone.region`` chooses the window: ``official`` (default) is the
  resized pattern's tight box, as the official code crops the source to the box of mask > 128 before
  resizing, so closing, dilation and the edit are clipped to that box (a side thinner than
  ``clone.min_side`` is widened with real source context, where the official code pads with black);
  ``context`` (``cai_*_context.yaml``) adds close+dilate kernel sizes of real source context
  (``clone.context_frac`` is loaded) on every side, so the dilated mask and the edit reach past the
  box (larger labels, stronger small anomalies). Pixels outside the foreground are restored from the
  normal image (official ``merge_images``).
* **Label** (Eq. 4): ``|gray(I_sa) - gray(I_n)| > label.threshold`` (T = 7, the official value: above
  the ±1-2 grey levels PE leaves in untouched areas and JPEG-like noise, below a visible change), then a
  ``label.median_kernel`` median blur, then ∧ foreground. An attempt whose mask has fewer than
  ``label.min_pixels`` pixels is retried with another pattern without counting it (official: retry
  while the 0/255 mask sums below 10, i.e. has no pixel). ``label.rule``: ``paper`` (default) as above;
  ``pattern`` (``cai_*_tight.yaml``) keeps Eq. 4's pixels only inside the closed+dilated clone mask, so
  PE's smooth halo around the pattern is not labelled.

Ablations (Table 3): ``ablation.pe=false`` pastes the resized pattern under its binary mask (no
blending); ``ablation.stm=false`` draws ``R' ~ U(lowest lower bound, highest upper bound)`` = U(0.1, 1)
for every pattern regardless of ``R`` (trivial patterns are used too; no scale typing, no quotas, no
preference: ``generate`` returns ``n`` outputs, each labelled with the scale type of its R');
``ablation.ils=false`` draws the centre uniformly over in-image positions, ignoring the foreground.

Quotas for ``generate(n)``: ``n == N_l+N_m+N_s`` gives exactly those counts; other ``n`` scales the
quotas by largest remainders (ties to the larger scale). ``__call__`` (one output) draws its scale
bucket with probability ∝ quota, so its scale distribution equals ``generate``'s. Algorithm 1 never
ends when the bank cannot serve a quota (no pattern that large for this foreground): after
``max_attempts`` fruitless draws one unit of the largest open quota moves to the next smaller scale
(logged); if even the small quota fails that long, the output is the normal image with an empty mask
(logged). ``last_info`` / :meth:`CAISynthesizer.generate_with_info` give each output's scale, R',
location, box and bank item (its anomaly class), e.g. to regroup outputs by class.

Quotas must be non-negative integers (:func:`check_quotas`), and in a pipeline run
(``SynthesisContext.n_per_image`` given to :meth:`CAISynthesizer.prepare`) they must add up to
``n_per_image``: a :class:`ConfigError` says so before any synthesis, instead of 5:3:3 silently
becoming 4:3:3 or 0.5 becoming 0 (other ``n`` are only scaled for direct calls such as single redraws).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from cai.bank import AnomalyBank, BankItem, Pattern, canonical_source, filter_items, mask_bbox
from cai.errors import ConfigError
from cai.synth.base import SynthesisContext, Synthesizer
from cai.synth.blend import seamless_clone

log = logging.getLogger(__name__)

SCALES: tuple[str, ...] = ("large", "medium", "small")  # MAS preference order, largest first
#: PE window: "official" = the resized pattern's tight box (official crop of mask > 128); "context" =
#: the box plus close+dilate kernel sizes of real source context around it (``clone.context_frac``).
CLONE_REGIONS: tuple[str, ...] = ("official", "context")
#: Eq. 4 label: "paper" = |grey difference| > T everywhere; "pattern" = the same inside the clone mask only.
LABEL_RULES: tuple[str, ...] = ("paper", "pattern")
_INTERP = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}
_warned_empty_fg = False


@dataclass(frozen=True)
class Injection:
    """One pseudo anomaly with its provenance.

    ``scale`` is the quota bucket (None when the image was left normal), ``ratio`` the realised
    synthesis STR R' = s'_a / s_f, ``target_ratio`` the drawn R', ``source_ratio`` the original R,
    ``location`` the ILS centre (row, col), ``box`` the pattern's bounding box in the target
    (top, left, height, width), ``ils`` how the location was found ("foreground", "shrunk",
    "anywhere", "image" when ILS is ablated).
    """

    image: np.ndarray
    mask: np.ndarray
    scale: str | None
    ratio: float | None = None
    target_ratio: float | None = None
    source_ratio: float | None = None
    location: tuple[int, int] | None = None
    box: tuple[int, int, int, int] | None = None
    item: BankItem | None = None
    ils: str | None = None
    attempts: int = 0


@dataclass
class _Target:
    """Per-target precomputation: foreground, its row prefix sums (ILS) and s_f (Eq. 1)."""

    fg: np.ndarray
    rowcum: np.ndarray  # (H, W+1): rowcum[y, x] = #foreground pixels in row y, columns [0, x)
    s_f: int


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def _need(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"Missing config value {where}.{key}.", fix="See conf/synthesizer/cai_n.yaml.")
    return cfg[key]


def source_target_ratio(anomaly_mask: np.ndarray, foreground: np.ndarray) -> float:
    """Eq. 1: R = max(minbb(y_i)) / max(minbb(y^(n))), the longest sides of the two masks' boxes."""
    a, f = mask_bbox(anomaly_mask), mask_bbox(foreground)
    if a is None or f is None:
        raise ValueError("source_target_ratio needs two non-empty masks")
    return max(a[2], a[3]) / max(f[2], f[3])


def scale_type(ratio: float, ranges: Mapping[str, tuple[float, float]], trivial_below: float) -> str:
    """§3.1 STM: "trivial" below ``trivial_below``, else the largest scale whose lower bound R reaches."""
    if ratio < trivial_below:
        return "trivial"
    for s in SCALES:
        if ratio >= ranges[s][0]:
            return s
    return "trivial"


def allowed_scales(
    ratio: float, ranges: Mapping[str, tuple[float, float]], trivial_below: float
) -> tuple[str, ...]:
    """Scale types a pattern of original STR ``ratio`` may synthesize (never larger than its own)."""
    if ratio < trivial_below:
        return ()
    return tuple(s for s in SCALES if ratio >= ranges[s][0])


def label_mask(new: np.ndarray, old: np.ndarray, threshold: int, median_kernel: int) -> np.ndarray:
    """Eq. 4: ``|gray(new) - gray(old)| > T``, then a ``median_kernel`` median blur (official
    ``difference_image``; grey = ITU-R 601 luma of RGB, computed on each image before differencing)."""
    g_new = cv2.cvtColor(np.ascontiguousarray(new), cv2.COLOR_RGB2GRAY)
    g_old = cv2.cvtColor(np.ascontiguousarray(old), cv2.COLOR_RGB2GRAY)
    binary = np.where(cv2.absdiff(g_new, g_old) > threshold, np.uint8(255), np.uint8(0))
    return cv2.medianBlur(binary, median_kernel) > 0


def check_quotas(quotas: Mapping[str, Any]) -> dict[str, int]:
    """MAS quotas as {large, medium, small} counts: non-negative integers with a positive sum, else ConfigError."""
    bad_keys = sorted(set(quotas) - set(SCALES))
    bad_values = {s: v for s, v in quotas.items()
                  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0}
    if bad_keys or bad_values or sum(int(quotas.get(s, 0)) for s in SCALES if s not in bad_values) <= 0:
        what = (f"unknown scale(s) {bad_keys}" if bad_keys else
                f"not a non-negative integer: {bad_values}" if bad_values else "they add up to 0")
        raise ConfigError(
            f"Invalid CAI scale quotas {dict(quotas)}: {what}.",
            where="the scale config group (conf/scale/*.yaml, scale.large/medium/small overrides)",
            fix="Give whole counts >= 0 for large, medium and small (pseudo anomalies per normal image), "
                "e.g. 4:3:3.",
        )
    return {s: int(quotas.get(s, 0)) for s in SCALES}


def check_quota_sum(quotas: Mapping[str, int], n_per_image: int) -> None:
    """The MAS quotas must add up to the outputs per normal image (no silent rescaling), else ConfigError."""
    total = sum(quotas.values())
    if total != n_per_image:
        raise ConfigError(
            f"The CAI scale quotas {dict(quotas)} add up to {total}, but each normal image gets "
            f"synthesizer.n_per_image={n_per_image} pseudo anomalies.",
            where="the scale config group (conf/scale/*.yaml, scale.large/medium/small overrides)",
            fix=f"Give scale.large, scale.medium and scale.small that add up to {n_per_image} "
                "(paper: 4:3:3 for 10), or change synthesizer.n_per_image to match.",
        )


def apportion(quotas: Mapping[str, int], n: int) -> dict[str, int]:
    """Scale ``quotas`` to sum to ``n`` by largest remainders (ties go to the larger scale)."""
    total = sum(quotas.values())
    if n == total:
        return dict(quotas)
    exact = {s: n * quotas[s] / total for s in SCALES}
    out = {s: math.floor(exact[s]) for s in SCALES}
    order = sorted(SCALES, key=lambda s: (-(exact[s] - out[s]), SCALES.index(s)))
    for s in order[: n - sum(out.values())]:
        out[s] += 1
    return out


class CAISynthesizer(Synthesizer):
    """Cross-domain Anomaly Injection (CAI-N with ``clone_mode="normal"``, CAI-M with ``"mixed"``).

    ``bank`` is an :class:`AnomalyBank` or a ``daad`` config node (built in :meth:`prepare`, where the
    leakage rule is applied with the target's ``leakage_sources``). The other arguments are the config
    groups described in the module docstring; all are required (the YAML holds the values).
    """

    def __init__(
        self,
        bank: AnomalyBank | Mapping[str, Any],
        clone_mode: str,
        quotas: Mapping[str, int],
        ablation: Mapping[str, bool],
        stm: Mapping[str, Any],
        clone: Mapping[str, Any],
        label: Mapping[str, Any],
        ils: Mapping[str, Any],
        max_attempts: int,
        preload: bool = True,
    ) -> None:
        self.clone_mode = str(clone_mode)
        if self.clone_mode not in ("normal", "mixed"):
            raise ConfigError(f"clone_mode={clone_mode!r}", fix="Use 'normal' (CAI-N) or 'mixed' (CAI-M).")
        quotas, ablation, stm, clone, label, ils = map(_plain, (quotas, ablation, stm, clone, label, ils))
        self.quotas = check_quotas(quotas)
        self.use_pe = bool(_need(ablation, "pe", "ablation"))
        self.use_stm = bool(_need(ablation, "stm", "ablation"))
        self.use_ils = bool(_need(ablation, "ils", "ablation"))
        self.trivial_below = float(_need(stm, "trivial_below", "stm"))
        ranges = _need(stm, "ranges", "stm")
        self.ranges = {s: (float(ranges[s][0]), float(ranges[s][1])) for s in SCALES}
        self.round_decimals = stm.get("round_decimals")
        resize = _need(stm, "resize", "stm")
        self.resize_rules = {}
        for key in ("shrink", "grow"):
            rule = _need(resize, key, "stm.resize")
            try:
                self.resize_rules[key] = (
                    _INTERP[_need(rule, "image", f"stm.resize.{key}")],
                    _INTERP[_need(rule, "mask", f"stm.resize.{key}")],
                    float(_need(rule, "mask_threshold", f"stm.resize.{key}")) * 255,
                )
            except KeyError as exc:
                raise ConfigError(
                    f"Unknown interpolation {exc} in stm.resize.{key}.", fix=f"Use {list(_INTERP)}."
                ) from exc
        self.close_kernel = np.ones((int(_need(clone, "close_kernel", "clone")),) * 2, np.uint8)
        self.dilate_kernel = np.ones((int(_need(clone, "dilate_kernel", "clone")),) * 2, np.uint8)
        self.pe_backend = str(_need(clone, "backend", "clone"))
        self.fast_size = bool(_need(clone, "fast_size", "clone"))
        self.region = str(_need(clone, "region", "clone"))
        if self.region not in CLONE_REGIONS:
            raise ConfigError(f"clone.region={self.region!r}", fix=f"Use one of {list(CLONE_REGIONS)}.")
        self.context_frac = float(_need(clone, "context_frac", "clone"))
        if self.region == "context":
            # room around the pattern for closing + dilation + the FFT-size growth of the PE region
            self.margin = self.close_kernel.shape[0] + self.dilate_kernel.shape[0]
            self.min_side = 0
        else:  # official: the PE window is the pattern's tight box (widened only for thin patterns)
            self.margin = 0
            self.min_side = int(_need(clone, "min_side", "clone"))
        self.threshold = int(_need(label, "threshold", "label"))
        self.median_kernel = int(_need(label, "median_kernel", "label"))
        self.label_rule = str(label.get("rule", "paper"))
        if self.label_rule not in LABEL_RULES:
            raise ConfigError(f"label.rule={self.label_rule!r}", fix=f"Use one of {list(LABEL_RULES)}.")
        self.min_pixels = int(_need(label, "min_pixels", "label"))
        self.shrink_factor = float(_need(ils, "shrink_factor", "ils"))
        if not 0.0 < self.shrink_factor < 1.0:
            raise ConfigError(f"ils.shrink_factor={self.shrink_factor}", fix="Use a factor in (0, 1).")
        self.max_attempts = int(max_attempts)
        self.preload = bool(preload)
        self._bank_cfg: Mapping[str, Any] | None = None
        self._bank_leak: tuple[str, ...] | None = None
        self.bank: AnomalyBank | None = None
        if isinstance(bank, AnomalyBank):
            self.bank = bank
        else:
            self._bank_cfg = _plain(bank)
        self._target_key: tuple | None = None
        self._target: _Target | None = None
        self.last_info: list[Injection] = []

    # ------------------------------------------------------------------ set-up
    def prepare(self, context: SynthesisContext) -> None:
        """Build (or re-filter) the bank for this target, applying the leakage rule.

        A bank built from config is kept (with its loaded patterns) while the leakage sources stay the
        same, e.g. across the categories of one dataset.
        """
        if context.n_per_image is not None:
            check_quota_sum(self.quotas, int(context.n_per_image))
        leak = tuple(sorted({canonical_source(s, where="leakage_sources") for s in context.leakage_sources}))
        if self._bank_cfg is not None:
            if self.bank is None or leak != self._bank_leak:
                self.bank = AnomalyBank.from_config(
                    self._bank_cfg, leakage_sources=leak, context_frac=self.context_frac
                )
                self._bank_leak = leak
                if self.preload:  # before synthesis workers fork, so they share the loaded patterns
                    self.bank.preload()
        elif self.bank is not None:
            kept = filter_items(self.bank.items, leakage_sources=context.leakage_sources)
            if len(kept) != len(self.bank):
                self.bank = AnomalyBank(kept, context_frac=self.bank.context_frac)
        self._target_key = self._target = None

    def _require_bank(self) -> AnomalyBank:
        if self.bank is None:
            raise ConfigError(
                "CAISynthesizer has no anomaly bank yet.",
                fix="Call prepare(SynthesisContext(...)) first: it builds the bank with the leakage rule.",
            )
        return self.bank

    def _target_for(self, foreground: np.ndarray) -> _Target:
        fg = np.asarray(foreground, dtype=bool)
        key = (fg.shape, hashlib.blake2b(np.packbits(fg).tobytes(), digest_size=16).digest())
        if key == self._target_key and self._target is not None:
            return self._target
        if not fg.any():
            global _warned_empty_fg
            if not _warned_empty_fg:
                log.warning("CAI: empty foreground mask; using the whole image (warned once)")
                _warned_empty_fg = True
            fg = np.ones_like(fg)
        box = mask_bbox(fg)
        assert box is not None
        rowcum = np.zeros((fg.shape[0], fg.shape[1] + 1), np.int32)
        np.cumsum(fg, axis=1, out=rowcum[:, 1:])
        self._target = _Target(fg=fg, rowcum=rowcum, s_f=max(box[2], box[3]))
        self._target_key = key
        return self._target

    # ------------------------------------------------------------------ STM / MAS
    def _draw_ratio(self, lo: float, hi: float, rng: np.random.Generator) -> float:
        value = float(rng.uniform(lo, hi))
        if self.round_decimals is not None:
            value = round(value, int(self.round_decimals))
        return value

    def _choose_scale(self, source_ratio: float, remaining: Mapping[str, int]) -> str | None:
        """Alg. 1 l. 6-23 (with the intended ``C < N`` test): the largest allowed scale still open."""
        for s in allowed_scales(source_ratio, self.ranges, self.trivial_below):
            if remaining[s] > 0:
                return s
        return None

    # ------------------------------------------------------------------ ILS
    def _candidates(self, tgt: _Target, ph: int, pw: int, use_fg: bool) -> tuple | None:
        """Eq. 2: rows/cols where the box centre keeps the box inside, and per-row foreground counts."""
        H, W = tgt.fg.shape
        r0, r1 = ph // 2, H - ph + ph // 2
        c0, c1 = pw // 2, W - pw + pw // 2
        if r1 < r0 or c1 < c0:
            return None
        if use_fg:
            counts = tgt.rowcum[r0 : r1 + 1, c1 + 1] - tgt.rowcum[r0 : r1 + 1, c0]
            if not counts.any():
                return None
        else:
            counts = None
        return r0, r1, c0, c1, counts

    @staticmethod
    def _pick(tgt: _Target, cand: tuple, rng: np.random.Generator) -> tuple[int, int]:
        r0, r1, c0, c1, counts = cand
        if counts is None:
            ncols = c1 - c0 + 1
            k = int(rng.integers((r1 - r0 + 1) * ncols))
            return r0 + k // ncols, c0 + k % ncols
        cum = np.cumsum(counts)
        k = int(rng.integers(int(cum[-1])))
        i = int(np.searchsorted(cum, k, side="right"))
        row = r0 + i
        k -= int(cum[i - 1]) if i else 0
        target = tgt.rowcum[row, c0] + k + 1
        col = int(np.searchsorted(tgt.rowcum[row], target, side="left")) - 1
        return row, col

    # ------------------------------------------------------------------ one injection
    def _resize(self, pat: Pattern, r: float) -> tuple[np.ndarray, np.ndarray]:
        ch, cw = pat.mask.shape
        size = (max(1, round(cw * r)), max(1, round(ch * r)))
        image_interp, mask_interp, threshold = self.resize_rules["shrink" if r < 1.0 else "grow"]
        img = cv2.resize(pat.image, size, interpolation=image_interp)
        m = cv2.resize(pat.mask.astype(np.uint8) * 255, size, interpolation=mask_interp)
        return img, m > threshold

    def _inject(
        self,
        image: np.ndarray,
        tgt: _Target,
        pat: Pattern,
        item: BankItem,
        source_ratio: float,
        ratio: float,
        scale: str,
        rng: np.random.Generator,
    ) -> Injection | None:
        H, W = tgt.fg.shape
        # ILS on the predicted resized box first (cheap), shrinking if the candidate set is empty
        _, _, bh, bw = pat.box
        how = "foreground" if self.use_ils else "image"
        drawn = ratio
        if self.use_ils:
            lo = self.ranges[scale][0] if self.use_stm else self.ranges[SCALES[-1]][0]
            trial = ratio
            while True:
                r = trial / source_ratio
                if self._candidates(tgt, max(1, round(bh * r)), max(1, round(bw * r)), True) is not None:
                    break
                if trial * self.shrink_factor < lo:
                    trial = ratio
                    how = "anywhere"
                    break
                trial *= self.shrink_factor
                how = "shrunk"
            ratio = trial
        rimg, rmask = self._resize(pat, ratio / source_ratio)
        pbox = mask_bbox(rmask)
        if pbox is None:
            return None
        pt, pl, ph, pw = pbox
        cand = self._candidates(tgt, ph, pw, how in ("foreground", "shrunk"))
        if cand is None and how != "image":
            how = "anywhere"
            cand = self._candidates(tgt, ph, pw, False)
        if cand is None:
            return None
        cy, cx = self._pick(tgt, cand, rng)
        top, left = cy - ph // 2, cx - pw // 2

        # window around the pattern in target coordinates, clipped to the image: the tight box plus
        # ``margin`` (context region), or the tight box widened to ``min_side`` (official region)
        m = self.margin
        gy, gx = max(0, self.min_side - ph), max(0, self.min_side - pw)
        wy0, wy1 = max(0, top - m - gy // 2), min(H, top + ph + m + gy - gy // 2)
        wx0, wx1 = max(0, left - m - gx // 2), min(W, left + pw + m + gx - gx // 2)
        # the same window in resized-crop coordinates, padded where the crop has no more context
        sy0, sy1 = wy0 - top + pt, wy1 - top + pt
        sx0, sx1 = wx0 - left + pl, wx1 - left + pl
        rh, rw = rmask.shape
        pads = (max(0, -sy0), max(0, sy1 - rh), max(0, -sx0), max(0, sx1 - rw))
        if any(pads):
            rimg = cv2.copyMakeBorder(rimg, *pads, cv2.BORDER_REFLECT_101)
            rmask = cv2.copyMakeBorder(rmask.astype(np.uint8), *pads, cv2.BORDER_CONSTANT, value=0) > 0
            sy0, sy1, sx0, sx1 = sy0 + pads[0], sy1 + pads[0], sx0 + pads[2], sx1 + pads[2]
        src_win = rimg[sy0:sy1, sx0:sx1]
        mask_win = rmask[sy0:sy1, sx0:sx1]
        dst_win = image[wy0:wy1, wx0:wx1]
        fg_win = tgt.fg[wy0:wy1, wx0:wx1]

        cmask = cv2.morphologyEx(mask_win.astype(np.uint8) * 255, cv2.MORPH_CLOSE, self.close_kernel)
        cmask = cv2.dilate(cmask, self.dilate_kernel)
        if self.use_pe:
            blended = seamless_clone(
                src_win, dst_win, cmask, self.clone_mode, backend=self.pe_backend, fast_size=self.fast_size
            )
        else:
            blended = np.where(mask_win[:, :, None], src_win, dst_win)
        blended = np.where(fg_win[:, :, None], blended, dst_win)

        # Eq. 4 on the window grown by the median radius (pixels outside the window are unchanged)
        k = self.median_kernel // 2
        ly0, ly1, lx0, lx1 = max(0, wy0 - k), min(H, wy1 + k), max(0, wx0 - k), min(W, wx1 + k)
        old = image[ly0:ly1, lx0:lx1]
        new = old.copy()
        new[wy0 - ly0 : wy1 - ly0, wx0 - lx0 : wx1 - lx0] = blended
        label = label_mask(new, old, self.threshold, self.median_kernel)
        label &= tgt.fg[ly0:ly1, lx0:lx1]
        if self.label_rule == "pattern":  # only where PE copied the pattern (no smooth halo around it)
            inside = np.zeros_like(label)
            inside[wy0 - ly0 : wy1 - ly0, wx0 - lx0 : wx1 - lx0] = cmask > 0
            label &= inside
        if int(np.count_nonzero(label)) < self.min_pixels:
            return None

        out = image.copy()
        out[wy0:wy1, wx0:wx1] = blended
        mask = np.zeros((H, W), bool)
        mask[ly0:ly1, lx0:lx1] = label
        return Injection(
            image=out,
            mask=mask,
            scale=scale,
            ratio=max(ph, pw) / tgt.s_f,
            target_ratio=drawn,
            source_ratio=source_ratio,
            location=(cy, cx),
            box=(top, left, ph, pw),
            item=item,
            ils=how,
        )

    def replay(
        self,
        image: np.ndarray,
        foreground: np.ndarray,
        index: int,
        ratio: float,
        scale: str,
        rng: np.random.Generator,
    ) -> Injection | None:
        """One injection of bank item ``index`` at the drawn R' ``ratio`` for ``scale`` (ILS, PE, Eq. 4),
        e.g. to replay another synthesizer's draws with this one's clone region and label rule.
        None when the label is empty (Algorithm 1 would retry)."""
        pat = self._require_bank().pattern(index)
        if pat is None:
            return None
        tgt = self._target_for(foreground)
        return self._inject(image, tgt, pat, self.bank[index], pat.s_a / tgt.s_f, ratio, scale, rng)

    # ------------------------------------------------------------------ Algorithm 1
    def _run(
        self,
        image: np.ndarray,
        foreground: np.ndarray,
        rng: np.random.Generator,
        remaining: dict[str, int] | None,
        n: int,
    ) -> list[Injection]:
        bank = self._require_bank()
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(f"CAI needs an RGB uint8 image, got {image.shape} {image.dtype}")
        tgt = self._target_for(foreground)
        out: list[Injection] = []
        attempts = 0
        while len(out) < n:  # Alg. 1 l. 3
            if attempts >= self.max_attempts:
                attempts = 0
                open_scales = [s for s in SCALES if remaining is not None and remaining[s] > 0]
                if open_scales and open_scales[0] != SCALES[-1]:
                    # no pattern served this scale in max_attempts draws (e.g. the bank has no
                    # pattern that large): move one unit of its quota to the next smaller scale
                    big = open_scales[0]
                    remaining[big] -= 1
                    remaining[SCALES[SCALES.index(big) + 1]] += 1
                    log.warning(
                        "CAI: no %s pseudo anomaly in %d draws; one moved to the next scale",
                        big,
                        self.max_attempts,
                    )
                    continue
                log.warning(
                    "CAI: nothing injected in %d draws (foreground too small?); output left normal",
                    self.max_attempts,
                )
                if open_scales:
                    remaining[open_scales[0]] -= 1
                out.append(
                    Injection(image.copy(), np.zeros(image.shape[:2], bool), None, attempts=self.max_attempts)
                )
                continue
            attempts += 1
            index = int(rng.integers(len(bank)))  # Alg. 1 l. 4 (uniform over all items)
            pat = bank.pattern(index)
            if pat is None:
                continue
            source_ratio = pat.s_a / tgt.s_f  # Eq. 1, Alg. 1 l. 5
            if self.use_stm:
                if source_ratio < self.trivial_below:  # l. 6
                    continue
                assert remaining is not None
                scale = self._choose_scale(source_ratio, remaining)
                if scale is None:  # every scale this pattern allows is full: draw another
                    continue
                ratio = self._draw_ratio(*self.ranges[scale], rng)
            else:
                lo = min(r[0] for r in self.ranges.values())
                hi = max(r[1] for r in self.ranges.values())
                ratio = self._draw_ratio(lo, hi, rng)
                scale = scale_type(ratio, self.ranges, -math.inf)
            inj = self._inject(image, tgt, pat, bank[index], source_ratio, ratio, scale, rng)
            if inj is None:  # empty pattern / no location / empty label: retry, not counted
                continue
            out.append(replace(inj, attempts=attempts))
            attempts = 0
            if remaining is not None:
                remaining[scale] -= 1
        return out

    def generate_with_info(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, n: int
    ) -> list[Injection]:
        """Algorithm 1 for one target: ``n`` pseudo anomalies with exact per-scale quotas (see module doc)."""
        remaining = apportion(self.quotas, n) if self.use_stm else None
        self.last_info = self._run(image, foreground, rng, remaining, n)
        return self.last_info

    def generate(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, n: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(i.image, i.mask) for i in self.generate_with_info(image, foreground, rng, n)]

    def generate_records(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, n: int
    ) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """``generate`` with each output's scale, R' and bank item (anomaly class, source) for the manifest."""
        return [
            (i.image, i.mask, {
                "scale": i.scale, "ratio": i.ratio, "ils": i.ils,
                "anomaly_class": i.item.anomaly_class if i.item else None,
                "source": i.item.source if i.item else None,
            })
            for i in self.generate_with_info(image, foreground, rng, n)
        ]

    def __call__(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One pseudo anomaly; its scale bucket is drawn with probability ∝ quota."""
        remaining = None
        if self.use_stm:
            weights = np.array([self.quotas[s] for s in SCALES], float)
            scale = SCALES[int(rng.choice(len(SCALES), p=weights / weights.sum()))]
            remaining = {s: int(s == scale) for s in SCALES}
        self.last_info = self._run(image, foreground, rng, remaining, 1)
        return self.last_info[0].image, self.last_info[0].mask

    @property
    def last_scales(self) -> list[str | None]:
        """Scale bucket of each output of the last call."""
        return [i.scale for i in self.last_info]
