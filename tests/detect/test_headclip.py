"""HeadCLIP (cai/detect/headclip.py) on a tiny randomly initialised open_clip CLIP built from a model config
in code: the head weights, the prompt learner, the V-V path, the joint score, the losses, the weights file."""

from __future__ import annotations

import copy

import open_clip  # a pinned dependency (pyproject.toml): never skipped
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cai.detect.headclip import (
    HeadCLIP,
    HeadCLIPLoss,
    LearnableHeadWeights,
    build_clip,
    dice_loss,
    focal_loss_on_probs,
    joint_anomaly_score,
)
from cai.errors import ConfigError, MissingFileError

# A 4-block, 4-head ViT (32 px, 8 px patches: a 4 x 4 grid) and a 2-block text tower: milliseconds on a CPU.
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
DETECTOR = {
    "clip": {"model": "ViT-L-14-336", "pretrained": "openai", "weights": None, "quick_gelu": True,
             "model_config": TINY_CLIP, "random_init": True, "image_size": 32,
             "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    "dpam_layer": 3, "feature_layers": [4], "global_ln_post": False, "temperature": 0.07, "sigma": 1,
    "jas": {"pixel_weight": 0.5},
    "prompt": {"n_ctx": 4, "deep_depth": 2, "deep_length": 2, "normal": "{}", "abnormal": "damaged {}",
               "classname": "object", "init_std": 0.02},
    "head_weights": {"enabled": True, "init": 1.0},
}


def _cfg(**over):
    cfg = copy.deepcopy(DETECTOR)
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return OmegaConf.create(cfg)


@pytest.fixture(scope="module")
def clip():
    return build_clip(OmegaConf.create(DETECTOR["clip"]), seed=0)


def _model(clip, **over) -> HeadCLIP:
    return HeadCLIP(clip, _cfg(**over), generator=torch.Generator().manual_seed(0)).eval()


def _images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- the frozen backbone and the learnable head weights ----------------------------------------------------
def test_backbone_is_frozen_and_only_prompts_and_head_weights_learn(clip):
    model = _model(clip)
    assert all(not p.requires_grad for p in clip.parameters())
    learned = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert learned == ["head_weights.weight", "prompts.ctx", "prompts.deep"]
    assert model.head_weights.weight.shape == (2, 4)  # dpam_layer=3: V-V in the last 2 blocks, 4 heads each
    assert set(model.learnable_state()) == {"prompts.ctx", "prompts.deep", "head_weights.weight"}


def test_head_weights_of_one_reproduce_the_frozen_clip_features_exactly(clip):
    model = _model(clip, global_ln_post=True)
    x = model.preprocess(_images())
    with torch.no_grad():
        glob, patches = model.encode_image(x)
        ref_glob = clip.encode_image(x)
        unweighted_glob, unweighted = model.encode_image(x, weighted=False)
        no_vv = _model(clip, dpam_layer=1, global_ln_post=True)  # no V-V path: CLIP's own tokens
        _, plain = no_vv.encode_image(x)
        clip.visual.output_tokens = True
        try:
            _, ref_tokens = clip.visual(x)  # ln_post(tokens) of CLIP's last block, without projection
        finally:
            clip.visual.output_tokens = False
    assert torch.equal(glob, ref_glob)                     # the class token is CLIP's image embedding, bit for bit
    assert torch.equal(patches[4], unweighted[4]) and torch.equal(glob, unweighted_glob)
    assert torch.equal(plain[4][:, 1:], ref_tokens @ clip.visual.proj)
    assert not torch.allclose(patches[4], plain[4])        # the V-V path does change the patch features

    # A head weight away from 1 changes the V-V patch features, never the class token (the original path).
    with torch.no_grad():
        model.head_weights.weight[1, 2] = 0.0
        glob2, patches2 = model.encode_image(x)
    assert torch.equal(glob2, glob) and not torch.allclose(patches2[4], patches[4])


def test_vv_path_is_anomalyclips_dual_path(clip):
    """Reference written out from AnomalyCLIP.py (Attention with q = k = v, dual path, FFN skipped on the
    V-V path): layer-4 tokens of a 4-block encoder whose last 2 blocks are refined, head weights w."""
    model = _model(clip)
    w = torch.tensor([[1.0, 0.5, 2.0, 0.0], [0.3, 1.0, 1.0, 1.5]])
    with torch.no_grad():
        model.head_weights.weight.copy_(w)
        x = model.preprocess(_images(seed=1))
        _, patches = model.encode_image(x)
        v = clip.visual
        t = v.conv1(x).flatten(2).transpose(1, 2)
        t = torch.cat([v.class_embedding.expand(t.shape[0], 1, -1), t], dim=1) + v.positional_embedding
        t = v.ln_pre(t)
        blocks = v.transformer.resblocks
        for blk in blocks[:2]:
            t = blk(t)
        x_ori, x_vv = t, t
        for j, blk in enumerate(blocks[2:]):
            h = blk.ln_1(x_ori)
            b, n, c = h.shape
            qkv = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias).reshape(b, n, 3, 4, c // 4)
            val = qkv[:, :, 2].permute(0, 2, 1, 3)
            attn = torch.softmax(val @ val.transpose(-2, -1) * (c // 4) ** -0.5, dim=-1)
            heads = (attn @ val) * w[j].view(1, 4, 1, 1)
            x_vv = x_vv + blk.attn.out_proj(heads.transpose(1, 2).reshape(b, n, c))
            x_ori = blk(x_ori)
        ref = v.ln_post(x_vv) @ v.proj
    torch.testing.assert_close(patches[4], ref, rtol=1e-5, atol=1e-5)


def test_learnable_head_weights_module():
    lhw = LearnableHeadWeights(3, 2, init=1.0)
    heads = torch.randn(2, 2, 5, 4)
    assert torch.equal(lhw(0, heads), heads)
    with torch.no_grad():
        lhw.weight[2] = torch.tensor([2.0, -1.0])
    out = lhw(2, heads)
    assert torch.equal(out[:, 0], 2.0 * heads[:, 0]) and torch.equal(out[:, 1], -heads[:, 1])
    out.sum().backward()
    assert lhw.weight.grad[:2].abs().sum() == 0 and lhw.weight.grad[2].abs().sum() > 0


# --- the prompt learner -------------------------------------------------------------------------------
def test_prompt_learner_builds_anomalyclips_two_prompts(clip):
    model = _model(clip)
    p = model.prompts
    tok = open_clip.tokenize(["X X X X object.", "X X X X damaged object."], context_length=16)
    assert torch.equal(p.tokens, tok)
    emb = p.embeddings()
    assert emb.shape == (2, 16, 32) and p.ctx.shape == (2, 4, 32) and p.deep.shape == (1, 2, 32)
    with torch.no_grad():
        ref = clip.token_embedding(tok)
    assert torch.equal(emb[:, :1], ref[:, :1]) and torch.equal(emb[:, 5:], ref[:, 5:])  # SOT | words, '.', EOT
    assert torch.equal(emb[:, 1:5], p.ctx)                                               # learnable words
    assert not torch.equal(emb[0], emb[1])                                               # "damaged" differs


def test_prompt_learner_with_the_placeholder_words_is_clips_text_encoder(clip):
    """Context words set to the embeddings of "X" and no deep prompts: exactly CLIP's encode_text of the
    written prompts; a deep prompt then changes the features and receives gradient."""
    model = _model(clip, **{"prompt.deep_depth": 1})
    tok = open_clip.tokenize(["X X X X object.", "X X X X damaged object."], context_length=16)
    with torch.no_grad():
        model.prompts.ctx.copy_(clip.token_embedding(tok)[:, 1:5])
        torch.testing.assert_close(model.encode_text(), clip.encode_text(tok), rtol=0, atol=1e-6)
    deep = _model(clip)
    feats = deep.encode_text()
    (feats[1] - feats[0]).pow(2).sum().backward()
    assert deep.prompts.ctx.grad.abs().sum() > 0 and deep.prompts.deep.grad.abs().sum() > 0
    with torch.no_grad():
        deep.prompts.deep.mul_(5.0)
        assert not torch.allclose(deep.encode_text(), feats.detach())


# --- the joint anomaly score and the maps ---------------------------------------------------------------
def test_joint_anomaly_score():
    prob = torch.tensor([0.2, 0.9])
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2], maps[1, 3, 3] = 0.6, 0.1
    torch.testing.assert_close(joint_anomaly_score(prob, maps, 0.5), torch.tensor([0.4, 0.5]))
    assert torch.equal(joint_anomaly_score(prob, maps, 0.0), prob)              # AnomalyCLIP's image score
    torch.testing.assert_close(joint_anomaly_score(prob, maps, 1.0), torch.tensor([0.6, 0.1]))
    with pytest.raises(ConfigError, match="pixel_weight"):
        joint_anomaly_score(prob, maps, 1.5)


def test_anomaly_maps_and_scores(clip):
    model = _model(clip, sigma=0)
    images = _images(3, size=40, seed=2)
    maps, scores = model.anomaly_maps(images, out_size=(40, 40))
    assert maps.shape == (3, 40, 40) and scores.shape == (3,)
    with torch.no_grad():
        out = model(images)
        p = out["patch_probs"][0]
        at_input = F.interpolate(((p[:, 1] + 1 - p[:, 0]) / 2).unsqueeze(1), size=(32, 32), mode="bilinear")[:, 0]
        expected = joint_anomaly_score(torch.softmax(out["image_logits"], -1)[:, 1], at_input, 0.5)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(maps, F.interpolate(at_input.unsqueeze(1), size=(40, 40), mode="bilinear")[:, 0])
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


# --- losses -------------------------------------------------------------------------------------------
def test_focal_and_dice_losses_are_anomalyclips():
    from cai.detect.focal import FocalLoss

    probs = torch.softmax(torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(3)), dim=1)
    target = (torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.7).long()
    # DRAEM's focal loss (same Hsuxu code) on logits whose softmax are these probabilities
    ref = FocalLoss(gamma=2.0, alpha=1.0, smooth=1e-5)(probs.log(), target)
    torch.testing.assert_close(focal_loss_on_probs(probs, target, 2.0, 1e-5), ref)
    g = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    p = torch.tensor([[1.0, 0.5, 0.5, 0.0]])
    torch.testing.assert_close(dice_loss(p, g, 1.0), torch.tensor(1 - (2 * 1.5 + 1) / (2.0 + 2.0 + 1)))


def test_headclip_loss_prefers_the_right_answer():
    loss = HeadCLIPLoss(local_weight=4, focal_gamma=2, focal_smooth=1e-5, dice_smooth=1)
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[1, 2:6, 2:6] = 1
    right = torch.zeros(2, 2, 8, 8)
    right[:, 0], right[:, 1] = 1 - masks.float(), masks.float()
    good = {"image_logits": torch.tensor([[5.0, -5.0], [-5.0, 5.0]]), "patch_probs": [right]}
    bad = {"image_logits": -good["image_logits"], "patch_probs": [right.flip(1)]}
    assert loss(good, masks) < 0.1 < loss(bad, masks)


# --- weights file ---------------------------------------------------------------------------------------
def test_missing_weights_stop_with_model_file_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = OmegaConf.create({**DETECTOR["clip"], "model_config": None, "random_init": False,
                            "weights": str(tmp_path / "clip" / "ViT-L-14-336px.pt")})
    with pytest.raises(MissingFileError) as err:
        build_clip(cfg)
    msg = err.value.message
    assert "ViT-L-14-336" in msg and str(tmp_path / "clip" / "ViT-L-14-336px.pt") in msg
    assert "https://openaipublic.azureedge.net/clip/models/" in msg and "ViT-L-14-336px.pt" in msg
    assert "never downloads" in msg and not (tmp_path / "clip").exists()
    with pytest.raises(ConfigError, match="No CLIP weights file"):
        build_clip(OmegaConf.create({**DETECTOR["clip"], "random_init": False}))


def test_weights_are_loaded_from_the_configured_file(clip, tmp_path):
    path = tmp_path / "tiny_clip.bin"
    torch.save(clip.state_dict(), path)
    loaded = build_clip(OmegaConf.create({**DETECTOR["clip"], "random_init": False, "weights": str(path)}), seed=7)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), clip.state_dict().values(), strict=True))
    other = build_clip(OmegaConf.create(DETECTOR["clip"]), seed=7)  # another random init: other weights
    assert not torch.equal(other.visual.proj, clip.visual.proj)


def test_a_torchscript_archive_as_openai_ships_its_weights_loads(clip, tmp_path):
    import warnings

    image, text = torch.rand(1, 3, 32, 32), torch.randint(0, 49407, (1, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(clip, (image, text), check_trace=False), tmp_path / "ViT-tiny.pt")
        loaded = build_clip(OmegaConf.create({**DETECTOR["clip"], "random_init": False,
                                              "weights": str(tmp_path / "ViT-tiny.pt")}), seed=7)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), clip.state_dict().values(), strict=True))
