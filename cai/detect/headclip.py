"""HeadCLIP: a frozen CLIP adapted to anomaly detection by learned prompts, head weights and a joint score.

Jeong, Heo, Son, Kang, "Domain Adaptation of Attention Heads for Zero-shot Anomaly Detection",
arXiv 2505.22259 (v2, 2025). Per its abstract: learnable prompts in the text encoder generalise normality
and abnormality; learnable head weights (LHW) in the image encoder adjust the features each attention head
contributes; a joint anomaly score (JAS) brings the adapted pixel-level map into the image-level score; the
few learned parameters are trained on an auxiliary dataset's annotated anomalies and tested zero-shot.

Where the sections come from. Only the paper's abstract and the opening of its introduction could be
read here (its method section and the authors' code, kiyoonjeong0305/HeadCLIP, were not retrievable), so:

* Everything HeadCLIP shares with AnomalyCLIP (Zhou et al., ICLR 2024) follows AnomalyCLIP's public code,
  zqhang/AnomalyCLIP at 45ed4dd: the frozen OpenAI ViT-L/14@336 at 518 px, the dual-path V-V attention
  (DPAM) of its last 19 blocks (``AnomalyCLIP_lib/AnomalyCLIP.py``), the object-agnostic prompts with deep
  text prompts (``prompt_ensemble.py::AnomalyCLIP_PromptLearner``), the similarity maps
  (``model_load.py::compute_similarity/get_similarity_map``), the losses and optimiser (``train.py``,
  ``loss.py``) and the map post-processing (``test.py``). Each function below names its file.
* LHW and JAS are built from the abstract's description; their exact form is our reading, not verified
  against the paper (see :class:`LearnableHeadWeights` and :func:`joint_anomaly_score`).

The CLIP backbone is an ``open_clip`` CLIP whose weights never change (``requires_grad=False``, eval mode);
its own modules do the original path, so with every head weight at 1 the features are exactly the frozen
CLIP's (and AnomalyCLIP's).
"""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from scipy import ndimage
from torch import nn

from cai.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- backbone
def _open_clip() -> Any:
    import open_clip  # noqa: PLC0415 - imported on use: the UNet path never needs it

    return open_clip


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else copy.deepcopy(node)


def clip_model_config(clip_cfg: DictConfig) -> dict[str, Any]:
    """The open_clip model config: ``clip.model_config`` when given (a tiny CLIP in tests), else the built-in
    config of ``clip.model`` (``ViT-L-14-336`` for AnomalyCLIP's ``ViT-L/14@336px``)."""
    if clip_cfg.get("model_config") is not None:
        return dict(_plain(clip_cfg.model_config))
    name = str(clip_cfg.model)
    found = _open_clip().get_model_config(name)
    if found is None:
        raise ConfigError(f"open_clip has no model config named {name!r}.", where="detector.clip.model",
                          fix="Use an open_clip model name (open_clip.list_models()), e.g. ViT-L-14-336, or give "
                              "detector.clip.model_config={...}.")
    return copy.deepcopy(found)


def _download_hint(clip_cfg: DictConfig) -> str:
    """Where the weights of (clip.model, clip.pretrained) are published, from open_clip's own registry."""
    oc = _open_clip()
    tag = clip_cfg.get("pretrained")
    entry = (oc.get_pretrained_cfg(str(clip_cfg.model), str(tag)) if tag else None) or {}
    places = [entry["url"]] if entry.get("url") else []
    if entry.get("hf_hub"):
        places.append(f"https://huggingface.co/{entry['hf_hub'].rstrip('/')}")
    return " or ".join(places) if places else "the publisher of that open_clip model's weights"


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a CLIP checkpoint: OpenAI's TorchScript ``.pt``, or an open_clip state dict (``.bin``, ``.pt``,
    ``.safetensors``), strictly."""
    oc = _open_clip()
    try:
        oc.load_checkpoint(model, str(path), strict=True, weights_only=True)
        return
    except RuntimeError as err:
        if "TorchScript" not in str(err):
            raise
    state = torch.jit.load(str(path), map_location="cpu").state_dict()  # OpenAI's released archives
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    kept = set(model.state_dict())  # an archive also holds buffers open_clip keeps out of its state (attn_mask)
    transient = {name for name, _ in model.named_buffers()} - kept
    model.load_state_dict({k: v for k, v in state.items() if k not in transient}, strict=True)


def _weights_file(clip_cfg: DictConfig) -> Path | None:
    """The CLIP weights file ``clip.weights`` (None: a random CLIP, ``random_init: true``). Both or neither
    given, or a file that is not there, stop with what to set."""
    weights = clip_cfg.get("weights")
    name = f"{clip_cfg.get('model')} (pretrained={clip_cfg.get('pretrained')})"
    if weights in (None, ""):
        if not clip_cfg.get("random_init"):
            raise ConfigError(f"No CLIP weights file given for {name}.", where="detector.clip.weights",
                              fix=f"Set detector.clip.weights=<file>; download it from {_download_hint(clip_cfg)}.")
        return None
    path = Path(str(weights))
    if clip_cfg.get("random_init"):
        raise ConfigError(f"detector.clip.random_init=true asks for a random CLIP, but detector.clip.weights={path} "
                          "names a weights file: which of the two is meant is not clear.",
                          where="detector.clip.random_init",
                          fix="Keep detector.clip.random_init=false to use the weights file, or pass "
                              "detector.clip.weights=null for a random CLIP (tests only).")
    if not path.is_file():
        raise MissingFileError(
            f"The CLIP weights of {name} are not at {path} (HeadCLIP never downloads at run time).",
            where=f"detector.clip.weights={path}",
            fix=f"Download {_download_hint(clip_cfg)} and save it as {path} (or point "
                "detector.clip.weights=<file> at your copy: OpenAI's .pt, or an open_clip .bin/.safetensors).")
    return path


def _clip_kwargs(clip_cfg: DictConfig) -> dict[str, Any]:
    """``open_clip.CLIP``'s arguments for ``detector.clip``; a CLIP whose text tower is not OpenAI's (custom,
    Hugging Face) or not read at the end-of-text token is refused: the prompts go into its token embeddings."""
    model_cfg = clip_model_config(clip_cfg)
    text = model_cfg.get("text_cfg") or {}
    if (model_cfg.pop("custom_text", False) or not isinstance(text, dict) or text.get("hf_model_name")
            or text.get("pool_type", "argmax") != "argmax"):
        raise ConfigError(f"detector.clip.model={clip_cfg.model} has a custom text tower; HeadCLIP needs a CLIP "
                          "with OpenAI's text transformer (prompts are inserted into its token embeddings and read "
                          "at the end-of-text token).",
                          where="detector.clip.model", fix="Use e.g. detector.clip.model=ViT-L-14-336.")
    model_cfg["quick_gelu"] = bool(clip_cfg.quick_gelu)
    return model_cfg


def build_clip(clip_cfg: DictConfig, seed: int = 0) -> nn.Module:
    """A frozen open_clip CLIP (ViT image tower) from ``detector.clip``.

    Weights come from the file ``clip.weights`` only, never from the network; a missing file stops with
    the model name, the path expected and where to get it, a file of another model with what differs.
    ``weights: null`` needs ``random_init: true`` (tests: a tiny CLIP of ``model_config`` seeded by ``seed``;
    its numbers mean nothing)."""
    oc = _open_clip()
    model_cfg = _clip_kwargs(clip_cfg)
    path = _weights_file(clip_cfg)
    if path is None:
        log.warning("HeadCLIP on a randomly initialised CLIP (detector.clip.random_init): a test set-up, its "
                    "numbers mean nothing.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = oc.CLIP(**model_cfg)
    else:
        model = oc.CLIP(**model_cfg)
        try:
            _load_weights(model, path)
        except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:
            first = str(err).strip().splitlines()
            raise ConfigError(
                f"{path} does not hold the weights of detector.clip.model={clip_cfg.model} "
                f"({(first[0] if first else type(err).__name__)[:300]}).", where=f"detector.clip.weights={path}",
                fix="Point detector.clip.weights at that model's weights (OpenAI's .pt, or an open_clip "
                    f".bin/.safetensors; download: {_download_hint(clip_cfg)}), or set detector.clip.model to "
                    "the model the file holds.") from err
    if not isinstance(model.visual, oc.transformer.VisionTransformer) or model.visual.proj is None:
        raise _not_a_vit(clip_cfg)
    if model.text_pool_type != "argmax":
        raise ConfigError(f"detector.clip.model={clip_cfg.model} pools text with {model.text_pool_type!r}; the "
                          "prompt learner reads the end-of-text token (argmax).", where="detector.clip.model",
                          fix="Use an OpenAI-style CLIP, e.g. detector.clip.model=ViT-L-14-336.")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------------------------- checks
def _not_a_vit(clip_cfg: DictConfig) -> ConfigError:
    """The error for a CLIP without a ViT image tower (found from its config, or on the built model)."""
    return ConfigError(f"detector.clip.model={clip_cfg.model} has no ViT image tower with a projection; "
                       "HeadCLIP re-weights ViT attention heads.", where="detector.clip.model",
                       fix="Use a ViT CLIP, e.g. detector.clip.model=ViT-L-14-336.")


@dataclass(frozen=True)
class ClipShape:
    """What HeadCLIP's settings must fit in a CLIP: image blocks, heads and patch size; text blocks and
    context length."""

    n_layers: int
    n_heads: int
    patch: int
    text_layers: int
    context_length: int

    @classmethod
    def of_model(cls, clip: nn.Module) -> ClipShape:
        """The shape of a built CLIP."""
        blocks = clip.visual.transformer.resblocks
        return cls(len(blocks), int(blocks[0].attn.num_heads), int(clip.visual.conv1.kernel_size[0]),
                   len(clip.transformer.resblocks), int(clip.context_length))

    @classmethod
    def of_config(cls, clip_cfg: DictConfig) -> ClipShape:
        """The shape of ``detector.clip``'s model config, without building it (open_clip's own defaults for the
        keys it leaves out); a config that is no ViT CLIP stops here."""
        oc = _open_clip()
        model_cfg = _clip_kwargs(clip_cfg)
        try:
            vision = oc.model.CLIPVisionCfg(**(model_cfg.get("vision_cfg") or {}))
            text = oc.model.CLIPTextCfg(**(model_cfg.get("text_cfg") or {}))
        except TypeError as err:
            raise ConfigError(f"detector.clip's model config is not an open_clip CLIP config ({err}).",
                              where="detector.clip.model_config" if clip_cfg.get("model_config") is not None
                              else "detector.clip.model",
                              fix="Use an open_clip model name, e.g. detector.clip.model=ViT-L-14-336.") from err
        if vision.timm_model_name or not isinstance(vision.layers, int):
            raise _not_a_vit(clip_cfg)
        return cls(int(vision.layers), int(vision.width) // int(vision.head_width), int(vision.patch_size),
                   int(text.layers), int(text.context_length))


def _number(cfg: DictConfig, key: str, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, fix: str = "", whole: bool = False) -> float:
    """``detector.<key>`` as a finite number (``whole``: an integer) within the given bounds, else a
    ConfigError naming them."""
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        need = " and ".join(x for x in (lo, hi) if x) or "finite"
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"detector.{key} must be {kind} {need}, got {value!r}.", where=f"detector.{key}",
                          fix=fix or f"Leave detector.{key} at its default (conf/detector/headclip.yaml).")
    return float(value)


def check_prompt(n_ctx: int, deep_depth: int, deep_length: int, normal: str, abnormal: str, classname: str,
                 text_layers: int, context_length: int) -> list[str]:
    """The two prompt texts, ``[X]*n_ctx <state>.``; stops when the settings do not fit the text encoder:
    too few context words or deep layers, more deep layers than text blocks, deep tokens beyond the context
    words, a state without ``{}``-formatting, or a prompt longer than the context length (it would be cut)."""
    if n_ctx < 1 or deep_depth < 1 or deep_length < 0:
        raise ConfigError(f"prompt n_ctx={n_ctx}, deep_depth={deep_depth}, deep_length={deep_length}: need "
                          "n_ctx >= 1, deep_depth >= 1, deep_length >= 0.", where="detector.prompt",
                          fix="AnomalyCLIP: n_ctx=12, deep_depth=9, deep_length=4.")
    if deep_depth > text_layers or (deep_depth > 1 and deep_length > n_ctx):
        raise ConfigError(f"detector.prompt.deep_depth={deep_depth} / deep_length={deep_length} do not fit a "
                          f"text encoder of {text_layers} blocks with n_ctx={n_ctx} context tokens.",
                          where="detector.prompt", fix="Use deep_depth <= text blocks and deep_length <= n_ctx.")
    texts = []
    for key, state in (("normal", normal), ("abnormal", abnormal)):
        try:
            texts.append(f"{' '.join(['X'] * n_ctx)} {state.format(classname)}.")
        except (IndexError, KeyError, ValueError) as err:
            raise ConfigError(f"detector.prompt.{key}={state!r} is not a prompt with one {{}} for the class name "
                              f"({err}).", where=f"detector.prompt.{key}",
                              fix=f"e.g. detector.prompt.{key}='{'{}' if key == 'normal' else 'damaged {}'}'") from err
    tokenizer = _open_clip().tokenizer._tokenizer
    longest = max(len(tokenizer.encode(t)) + 2 for t in texts)  # + start and end of text
    if longest > context_length:
        raise ConfigError(f"The prompts take {longest} tokens with detector.prompt.n_ctx={n_ctx}, more than the text "
                          f"encoder's context length {context_length}: their end would be cut off.",
                          where="detector.prompt.n_ctx",
                          fix=f"Use detector.prompt.n_ctx <= {n_ctx - (longest - context_length)} (AnomalyCLIP: 12 "
                              "of 77).")
    return texts


def check_architecture(cfg: DictConfig, shape: ClipShape) -> None:
    """``detector``'s image size, V-V blocks, feature layers and prompts against the CLIP's shape."""
    image_size = int(cfg.clip.image_size)
    if image_size < shape.patch or image_size % shape.patch:
        raise ConfigError(f"detector.clip.image_size={image_size} is not a multiple of the patch size "
                          f"{shape.patch}.", where="detector.clip.image_size",
                          fix=f"Use a multiple of {shape.patch} (AnomalyCLIP: 518 = 37 x 14).")
    refined = int(cfg.dpam_layer) - 1  # AnomalyCLIP DAPM_replace: blocks[-1] .. blocks[-(DPAM_layer - 1)]
    if not 0 <= refined <= shape.n_layers:
        raise ConfigError(f"detector.dpam_layer={cfg.dpam_layer}: V-V attention in the last {refined} blocks of "
                          f"a {shape.n_layers}-block encoder.", where="detector.dpam_layer",
                          fix=f"Use 1 (none) .. {shape.n_layers + 1} (AnomalyCLIP: 20 of ViT-L's 24 blocks).")
    layers = list(cfg.feature_layers)
    bad = [v for v in layers if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= shape.n_layers]
    if bad or not layers or len(set(layers)) != len(layers):
        raise ConfigError(f"detector.feature_layers={layers}: blocks are numbered 1..{shape.n_layers}, each at "
                          "most once (a repeated one would count twice in the loss).",
                          where="detector.feature_layers", fix=f"e.g. detector.feature_layers=[{shape.n_layers}]")
    p = cfg.prompt
    check_prompt(int(p.n_ctx), int(p.deep_depth), int(p.deep_length), str(p.normal), str(p.abnormal),
                 str(p.classname), shape.text_layers, shape.context_length)


def check_config(cfg: DictConfig) -> None:
    """Every setting of ``detector`` (conf/detector/headclip.yaml) that needs no data and no weights: the
    weights file is there (or a random CLIP is asked for), the numbers are in range and the structural
    settings fit the CLIP's model config. ``validate_job`` calls it before any synthesis, so a bad value
    stops with one clear message instead of a traceback after hours of work."""
    clip_cfg = cfg.clip
    _number(cfg, "clip.image_size", 1, whole=True, fix="AnomalyCLIP: detector.clip.image_size=518.")
    if cfg.get("auxiliary") is not None:  # the size auxiliary images are read at (train_on=auxiliary)
        _number(cfg, "auxiliary.image_size", 1, whole=True, fix="detector.auxiliary.image_size=${..clip.image_size}")
    for key in ("mean", "std"):
        values = clip_cfg.get(key)
        ok = (values is not None and len(values) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values))
        if not ok or (key == "std" and min(values) <= 0):
            raise ConfigError(f"detector.clip.{key} must be three numbers (RGB){', all > 0' if key == 'std' else ''}, "
                              f"got {values}.", where=f"detector.clip.{key}",
                              fix="Leave it at OpenAI CLIP's normalisation (conf/detector/headclip.yaml).")
    _number(cfg, "temperature", 0, low_open=True, fix="AnomalyCLIP: detector.temperature=0.07.")
    _number(cfg, "sigma", 0, fix="AnomalyCLIP: detector.sigma=4 (0: no smoothing).")
    _number(cfg, "jas.pixel_weight", 0, 1, fix="detector.jas.pixel_weight=0.5 (0: AnomalyCLIP's image score).")
    _number(cfg, "head_weights.init", fix="detector.head_weights.init=1 (the frozen encoder at the start).")
    _number(cfg, "prompt.init_std", 0, fix="AnomalyCLIP: detector.prompt.init_std=0.02.")
    for key in ("local_weight", "focal_gamma", "focal_smooth", "dice_smooth"):
        _number(cfg, f"loss.{key}", 0, fix="A negative weight or exponent would reward wrong maps; leave "
                                           f"detector.loss.{key} at its default (conf/detector/headclip.yaml).")
    betas = cfg.get("betas")
    if betas is None or len(betas) != 2:
        raise ConfigError(f"detector.betas must be two numbers, got {betas}.", where="detector.betas",
                          fix="AnomalyCLIP: detector.betas=[0.5,0.999].")
    for i in range(2):
        _number(cfg, f"betas.{i}", 0, 1, high_open=True, fix="AnomalyCLIP: detector.betas=[0.5,0.999].")
    _weights_file(clip_cfg)
    check_architecture(cfg, ClipShape.of_config(clip_cfg))


# --------------------------------------------------------------------------------------------- learnables
class LearnableHeadWeights(nn.Module):
    """LHW (HeadCLIP abstract: "learnable head weights in the image encoder to dynamically adjust attention
    head features"): one scalar per (V-V attention block, head) multiplying that head's output before the
    block's output projection.

    Our reading of the abstract, not checked against the paper's method section: the weights act on the
    V-V (pixel-level) path that produces the patch features, not on CLIP's original path (the class token
    stays CLIP's), which is what makes a joint score that "utilizes domain-adapted pixel-level information"
    for the image level meaningful. Initialised to ``init`` (1): then the encoder is exactly the frozen one.
    """

    def __init__(self, n_layers: int, n_heads: int, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_layers, n_heads), float(init)))

    def forward(self, layer: int, heads: torch.Tensor) -> torch.Tensor:
        """``heads`` (B, H, N, d) of V-V block ``layer`` (0 = the first V-V block) re-weighted per head."""
        return heads * self.weight[layer].view(1, -1, 1, 1)


class PromptLearner(nn.Module):
    """AnomalyCLIP's object-agnostic prompts (``prompt_ensemble.py::AnomalyCLIP_PromptLearner``).

    Two prompts, ``[V_1..V_n] object.`` and ``[V_1..V_n] damaged object.`` (``state_normal_list`` /
    ``state_anomaly_list``), each with its own ``n_ctx`` learnable word embeddings (N(0, 0.02)) in place of
    the placeholder words; and ``deep_depth - 1`` sets of ``deep_length`` learnable tokens that replace
    tokens 1..deep_length at the input of text blocks 1..deep_depth-1 (``AnomalyCLIP.py::
    ResidualAttentionBlock_learnable_token``). AnomalyCLIP also defines ``compound_prompt_projections``
    that its forward never uses (they get no gradient); they are left out.
    """

    def __init__(self, clip: nn.Module, n_ctx: int, deep_depth: int, deep_length: int, normal: str,
                 abnormal: str, classname: str, init_std: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        oc = _open_clip()
        dim = clip.token_embedding.weight.shape[1]
        texts = check_prompt(n_ctx, deep_depth, deep_length, normal, abnormal, classname,
                             len(clip.transformer.resblocks), int(clip.context_length))
        tokens = oc.tokenize(texts, context_length=clip.context_length)
        with torch.no_grad():
            embedded = clip.token_embedding(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)          # start of text
        self.register_buffer("suffix", embedded[:, 1 + n_ctx:].clone(), persistent=False)  # class, '.', end, pad
        self.ctx = nn.Parameter(torch.empty(2, n_ctx, dim))          # [normal, abnormal] context words
        self.deep = nn.Parameter(torch.empty(deep_depth - 1, deep_length, dim))
        nn.init.normal_(self.ctx, std=init_std, generator=generator)
        nn.init.normal_(self.deep, std=init_std, generator=generator)
        self.deep_length = deep_length

    def embeddings(self) -> torch.Tensor:
        """The two prompts' input embeddings (2, context_length, dim)."""
        return torch.cat([self.prefix, self.ctx, self.suffix], dim=1)


# --------------------------------------------------------------------------------------------- model
class HeadCLIP(nn.Module):
    """Frozen CLIP + :class:`PromptLearner` + :class:`LearnableHeadWeights`; ``forward`` gives the image
    logits and the per-layer patch probabilities that the losses and :meth:`anomaly_maps` use.

    ``cfg`` is ``detector`` (conf/detector/headclip.yaml); ``generator`` seeds the prompt initialisation.
    """

    def __init__(self, clip: nn.Module, cfg: DictConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.clip = clip
        shape = ClipShape.of_model(clip)
        check_architecture(cfg, shape)
        self.n_layers, self.n_heads, self.patch = shape.n_layers, shape.n_heads, shape.patch
        self.image_size = int(cfg.clip.image_size)
        refined = int(cfg.dpam_layer) - 1  # AnomalyCLIP DAPM_replace: blocks[-1] .. blocks[-(DPAM_layer - 1)]
        self.vv_start = self.n_layers - refined  # index of the first V-V block
        self.feature_layers = [int(v) for v in cfg.feature_layers]
        self.global_ln_post = bool(cfg.global_ln_post)
        self.temperature = float(cfg.temperature)
        self.sigma = float(cfg.sigma)
        self.jas_pixel_weight = float(cfg.jas.pixel_weight)
        p = cfg.prompt
        self.prompts = PromptLearner(clip, int(p.n_ctx), int(p.deep_depth), int(p.deep_length), str(p.normal),
                                     str(p.abnormal), str(p.classname), float(p.init_std), generator)
        hw = cfg.head_weights
        self.head_weights = LearnableHeadWeights(refined, self.n_heads, float(hw.init)) if hw.enabled else None
        self.register_buffer("mean", torch.tensor(list(cfg.clip.mean), dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(cfg.clip.std), dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    # -- what is learned ---------------------------------------------------------------------------------
    def learnable(self) -> nn.ModuleDict:
        parts = {"prompts": self.prompts}
        if self.head_weights is not None:
            parts["head_weights"] = self.head_weights
        return nn.ModuleDict(parts)

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """The learned parameters only (the frozen CLIP is not checkpointed)."""
        return {k: v.detach().clone() for k, v in self.learnable().state_dict().items()}

    def load_learnable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.learnable().load_state_dict(state, strict=True)

    def train(self, mode: bool = True) -> HeadCLIP:
        super().train(mode)
        self.clip.eval()  # the backbone stays in eval mode (no dropout), training or not
        return self

    # -- text ----------------------------------------------------------------------------------------------
    def encode_text(self) -> torch.Tensor:
        """The [normal, abnormal] text features (2, D) (AnomalyCLIP.py::encode_text_learn with deep prompts)."""
        clip, prompts = self.clip, self.prompts
        x = prompts.embeddings() + clip.positional_embedding
        transformer = clip.transformer
        first_deep, n_deep = 1, prompts.deep.shape[0]
        for i, block in enumerate(transformer.resblocks):
            if first_deep <= i < first_deep + n_deep and prompts.deep_length:
                deep = prompts.deep[i - first_deep].unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
                x = torch.cat([x[:, :1], deep, x[:, 1 + prompts.deep_length:]], dim=1)
            x = _run_block(block, x, transformer.batch_first, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), prompts.tokens.argmax(dim=-1)]
        proj = clip.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # -- image ---------------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (B, 3, H, W) -> CLIP input at ``clip.image_size``: bicubic resize and the
        CLIP normalisation (AnomalyCLIP utils.py::get_transform: Resize(bicubic), ToTensor, Normalize)."""
        size = self.image_size
        if images.shape[-2:] != (size, size):
            shrink = images.shape[-1] > size or images.shape[-2] > size
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                                   antialias=shrink).clamp_(0.0, 1.0)
        return (images - self.mean) / self.std

    def _positional_embedding(self, grid: int) -> torch.Tensor:
        """CLIP's positional embedding for a ``grid`` x ``grid`` patch grid; another grid than the
        pretrained one is bilinearly resized (AnomalyCLIP.py::VisionTransformer.forward)."""
        pos = self.clip.visual.positional_embedding
        side = int(round((pos.shape[0] - 1) ** 0.5))
        if side == grid:
            return pos
        width = pos.shape[-1]
        grid_pos = pos[1:].reshape(1, side, side, width).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, (grid, grid), mode="bilinear")
        return torch.cat([pos[:1], grid_pos.reshape(width, grid * grid).t()], dim=0)

    def _vv_attention(self, block: nn.Module, x: torch.Tensor, layer: int, batch_first: bool,
                      weighted: bool = True) -> torch.Tensor:
        """AnomalyCLIP's V-V self-attention of ``block`` on ``x`` (``AnomalyCLIP.py::Attention``: q = k = v,
        softmax(v v^T / sqrt(d)) v, the block's own value and output projections), each head re-weighted by
        LHW before the output projection. Returns the block's residual update."""
        h = block.ln_1(x)
        if not batch_first:
            h = h.transpose(0, 1)
        attn = block.attn
        b, n, c = h.shape
        bias = attn.in_proj_bias[2 * c:] if attn.in_proj_bias is not None else None
        v = F.linear(h, attn.in_proj_weight[2 * c:], bias).view(b, n, self.n_heads, c // self.n_heads).transpose(1, 2)
        heads = F.scaled_dot_product_attention(v, v, v)
        if weighted and self.head_weights is not None:
            heads = self.head_weights(layer, heads)
        out = F.linear(heads.transpose(1, 2).reshape(b, n, c), attn.out_proj.weight, attn.out_proj.bias)
        out = block.ls_1(out)
        return out if batch_first else out.transpose(0, 1)

    def encode_image(self, x: torch.Tensor, weighted: bool = True) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Normalised CLIP input (B, 3, S, S) -> (global feature (B, D), {layer: tokens (B, 1 + N, D)}).

        Blocks before ``vv_start`` run as CLIP's; from there on two paths run side by side
        (``AnomalyCLIP.py::ResidualAttentionBlock`` dual path, ``ffn=False``): CLIP's original blocks, and a V-V
        path that adds each block's V-V attention (computed from the original path's input) and skips the MLP.
        Patch tokens of ``feature_layers`` come from the V-V path (before it starts: the original one), through
        ``ln_post`` and the projection; the global feature is the original path's class token
        (``global_ln_post``: through ``ln_post`` as CLIP; AnomalyCLIP: without). ``weighted=False`` ignores LHW.
        """
        visual = self.clip.visual
        transformer = visual.transformer
        batch_first = transformer.batch_first
        x = visual.conv1(x)
        grid = x.shape[-1]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        x = x + self._positional_embedding(grid).to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        if not batch_first:
            x = x.transpose(0, 1).contiguous()
        x_ori, x_vv = x, None
        tokens: dict[int, torch.Tensor] = {}
        for i, block in enumerate(transformer.resblocks):
            if i >= self.vv_start:
                update = self._vv_attention(block, x_ori, i - self.vv_start, batch_first, weighted)
                x_vv = (x_ori if x_vv is None else x_vv) + update
            x_ori = block(x_ori)
            if i + 1 in self.feature_layers:
                tokens[i + 1] = x_ori if x_vv is None else x_vv
        if not batch_first:
            x_ori = x_ori.transpose(0, 1)
            tokens = {k: v.transpose(0, 1) for k, v in tokens.items()}
        cls_token = visual.ln_post(x_ori)[:, 0] if self.global_ln_post else x_ori[:, 0]
        patches = {k: visual.ln_post(v) @ visual.proj for k, v in tokens.items()}
        return cls_token @ visual.proj, patches

    # -- scores --------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> dict[str, Any]:
        """Float images in [0, 1] (B, 3, H, W) -> ``image_logits`` (B, 2) and ``patch_probs``: per feature
        layer (B, 2, g, g) [normal, abnormal] probabilities on the patch grid (AnomalyCLIP train.py:
        cosine similarities / temperature, softmax over the two prompts; model_load.py::compute_similarity)."""
        glob, patches = self.encode_image(self.preprocess(images))
        text = F.normalize(self.encode_text(), dim=-1) if text is None else text
        logits = F.normalize(glob, dim=-1) @ text.t() / self.temperature
        probs = []
        for layer in self.feature_layers:
            tok = F.normalize(patches[layer][:, 1:], dim=-1)
            sim = torch.softmax(tok @ text.t() / self.temperature, dim=-1)
            side = int(round(sim.shape[1] ** 0.5))
            probs.append(sim.transpose(1, 2).reshape(sim.shape[0], 2, side, side))
        return {"image_logits": logits, "patch_probs": probs}

    @torch.no_grad()
    def anomaly_maps(self, images: torch.Tensor, out_size: Sequence[int] | None = None) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
        """(maps (B, *out_size) float32 on the CPU, JAS image scores (B,)) of float images in [0, 1].

        AnomalyCLIP test.py: each layer's map is (p_abnormal + 1 - p_normal) / 2 bilinearly upsampled to the
        CLIP input size, the layers are combined (test.py sums them; the mean here ranks every pixel the same
        and stays in [0, 1] for the joint score), then Gaussian-smoothed with ``sigma`` px there; finally
        resized to ``out_size`` (the size the masks are evaluated at)."""
        text = F.normalize(self.encode_text(), dim=-1)
        out = self.forward(images, text=text)
        size = (self.image_size, self.image_size)
        maps = torch.stack([
            F.interpolate(((p[:, 1] + 1.0 - p[:, 0]) / 2.0).unsqueeze(1).float(), size=size, mode="bilinear")[:, 0]
            for p in out["patch_probs"]]).mean(dim=0).cpu().numpy()
        if self.sigma > 0:
            maps = np.stack([ndimage.gaussian_filter(m, sigma=self.sigma) for m in maps])
        smoothed = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
        image_prob = torch.softmax(out["image_logits"].float(), dim=-1)[:, 1].cpu()
        scores = joint_anomaly_score(image_prob, smoothed, self.jas_pixel_weight)
        if out_size is not None and tuple(out_size) != size:
            smoothed = F.interpolate(smoothed.unsqueeze(1), size=tuple(out_size), mode="bilinear")[:, 0]
        return smoothed, scores


def joint_anomaly_score(image_prob: torch.Tensor, maps: torch.Tensor, pixel_weight: float) -> torch.Tensor:
    """JAS (HeadCLIP abstract: "a joint anomaly score ... to leverage adapted pixel-level information for
    enhanced image-level detection"): ``(1 - w) * p_abnormal(image) + w * max(pixel map)``.

    Our reading, not checked against the paper's method section: a convex combination of the image-level
    abnormal probability (class token vs the prompts) and the maximum of the (smoothed) pixel-level map, both
    in [0, 1]; ``w = 0`` is AnomalyCLIP's image score."""
    if not 0.0 <= pixel_weight <= 1.0:
        raise ConfigError(f"detector.jas.pixel_weight={pixel_weight} must be in [0, 1].", where="detector.jas")
    peak = maps.flatten(1).amax(dim=1).to(image_prob.dtype)
    return (1.0 - pixel_weight) * image_prob + pixel_weight * peak


def _run_block(block: nn.Module, x: torch.Tensor, batch_first: bool, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """One open_clip residual block on batch-first ``x`` whatever the transformer's layout."""
    if batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


# --------------------------------------------------------------------------------------------- losses
def focal_loss_on_probs(probs: torch.Tensor, target: torch.Tensor, gamma: float, smooth: float) -> torch.Tensor:
    """AnomalyCLIP loss.py::FocalLoss with ``apply_nonlin=None`` (the inputs are already probabilities),
    ``alpha=None``: one-hot target clamped to [smooth/(C-1), 1-smooth], p_t = <target, p> + smooth,
    loss = -(1 - p_t)^gamma log p_t, mean over pixels. ``probs`` (B, C, H, W), ``target`` (B, H, W) classes."""
    n_classes = probs.shape[1]
    one_hot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    if smooth:
        one_hot = one_hot.clamp(smooth / (n_classes - 1), 1.0 - smooth)
    pt = (one_hot * probs).sum(dim=1) + smooth
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """AnomalyCLIP loss.py::BinaryDiceLoss: 1 - mean over images of (2|P∩G| + s) / (|P| + |G| + s)."""
    p, g = probs.flatten(1), target.flatten(1)
    return 1.0 - ((2.0 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


class HeadCLIPLoss(nn.Module):
    """AnomalyCLIP train.py: cross-entropy of the image logits against the image label (an image is
    anomalous when its mask is not empty) + ``local_weight`` x sum over feature layers of focal(P, G) +
    dice(P_abnormal, G) + dice(P_normal, 1 - G), with the patch probabilities bilinearly upsampled to the
    masks' size (``lam = 4``, commit 76b83e1)."""

    def __init__(self, local_weight: float, focal_gamma: float, focal_smooth: float, dice_smooth: float) -> None:
        super().__init__()
        self.local_weight, self.gamma = float(local_weight), float(focal_gamma)
        self.focal_smooth, self.dice_smooth = float(focal_smooth), float(dice_smooth)

    def forward(self, out: dict[str, Any], masks: torch.Tensor) -> torch.Tensor:
        gt = (masks.reshape(masks.shape[0], *masks.shape[-2:]) > 0).float()
        labels = gt.flatten(1).amax(dim=1).long()
        loss = F.cross_entropy(out["image_logits"].float(), labels)
        local = torch.zeros((), device=gt.device)
        for probs in out["patch_probs"]:
            up = F.interpolate(probs.float(), size=gt.shape[-2:], mode="bilinear")
            local = local + focal_loss_on_probs(up, gt, self.gamma, self.focal_smooth)
            local = local + dice_loss(up[:, 1], gt, self.dice_smooth) + dice_loss(up[:, 0], 1.0 - gt, self.dice_smooth)
        return loss + self.local_weight * local
