import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cai.detect.trainer import DetectorTrainer, EvalSet, TrainSet
from cai.detect.unet import DiscriminativeUNet

CFG = {
    "loss": {"gamma": 2.0, "alpha": 1.0, "smooth": 1e-5}, "lr": 5e-3, "batch_size": 8, "epochs": 3,
    "samples_per_epoch": 64, "anomaly_fraction": 0.5, "lr_milestones": [0.8, 0.9], "lr_gamma": 0.2,
    "selection": "best", "eval_every": 1, "eval_batch_size": 8, "image_score_pool": 5, "pro_fpr_limit": 0.3,
    "amp": True, "channels_last": True, "compile": False,
}


def _toy(n=12, size=32, seed=0):
    """Noise images; pseudo/test anomalies are bright squares with exact masks."""
    rng = np.random.default_rng(seed)

    def normals(k):
        return torch.from_numpy(rng.integers(60, 120, (k, 3, size, size), dtype=np.uint8))

    def with_squares(k):
        imgs, masks = normals(k), torch.zeros(k, size, size, dtype=torch.bool)
        for i in range(k):
            y, x = rng.integers(0, size - 8, 2)
            imgs[i, :, y : y + 8, x : x + 8] = 250
            masks[i, y : y + 8, x : x + 8] = True
        return imgs, masks

    pseudo, pmasks = with_squares(n)
    t_anom, t_masks = with_squares(6)
    test_images = torch.cat([normals(4), t_anom])
    test_masks = torch.cat([torch.zeros(4, size, size, dtype=torch.bool), t_masks])
    return TrainSet(normals(n), pseudo, pmasks), EvalSet(test_images, test_masks, [str(i) for i in range(10)])


def _trainer(tmp_path, **over):
    cfg = OmegaConf.create({**CFG, **over})
    return DetectorTrainer(cfg, lambda: DiscriminativeUNet(base_width=4), tmp_path, torch.device("cpu"), seed=0)


def test_epoch_plan_is_seeded_and_balanced(tmp_path):
    t = _trainer(tmp_path, samples_per_epoch=100)
    kind, idx = t.epoch_plan(3, n_normal=10, n_pseudo=40)
    kind2, idx2 = t.epoch_plan(3, n_normal=10, n_pseudo=40)
    assert torch.equal(kind, kind2) and torch.equal(idx, idx2)
    assert int(kind.sum()) == 50
    assert idx[kind].max() < 40 and idx[~kind].max() < 10
    assert not torch.equal(t.epoch_plan(4, 10, 40)[1], idx)


def test_epoch_plan_without_samples_per_epoch_is_one_pass(tmp_path):
    """samples_per_epoch=null (HeadCLIP / AnomalyCLIP's epoch): every pseudo anomaly and normal image once."""
    t = _trainer(tmp_path, samples_per_epoch=None)
    kind, idx = t.epoch_plan(2, n_normal=7, n_pseudo=30)
    assert len(kind) == 37 and int(kind.sum()) == 30
    assert sorted(idx[kind].tolist()) == list(range(30)) and sorted(idx[~kind].tolist()) == list(range(7))
    again = t.epoch_plan(2, 7, 30)
    assert torch.equal(kind, again[0]) and torch.equal(idx, again[1])
    assert not torch.equal(t.epoch_plan(3, 7, 30)[1], idx)  # reshuffled each epoch


def test_make_trainer_picks_the_detectors_trainer(tmp_path):
    from cai.detect.trainer import make_trainer
    from cai.errors import ConfigError

    unet = OmegaConf.create({**CFG, "model": {"_target_": "cai.detect.unet.DiscriminativeUNet", "base_width": 4}})
    trainer = make_trainer(unet, tmp_path, torch.device("cpu"), seed=0)
    assert type(trainer) is DetectorTrainer and isinstance(trainer.new_model(), DiscriminativeUNet)
    with pytest.raises(ConfigError, match="not a DetectorTrainer"):
        make_trainer(OmegaConf.create({**CFG, "trainer": "cai.detect.unet.DiscriminativeUNet"}), tmp_path,
                     torch.device("cpu"), seed=0)


def test_fit_learns_toy_anomalies_and_selects_best(tmp_path):
    torch.manual_seed(0)
    train, test = _toy()
    result = _trainer(tmp_path, epochs=5).fit(train, test)
    assert len(result["history"]) == 5
    best = result["selected"]
    scores = [h["selection_score"] for h in result["history"]]
    assert best["selection_score"] == max(scores)
    assert best["pixel_auroc"] > 0.9
    assert (tmp_path / "checkpoints" / "best.pt").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()


def test_selection_last_reports_last_epoch(tmp_path):
    torch.manual_seed(0)
    train, test = _toy()
    result = _trainer(tmp_path, selection="last", epochs=2).fit(train, test)
    assert result["selected"]["epoch"] == 2
    assert [("pixel_auroc" in h) for h in result["history"]] == [False, True]


def test_compile_off_cuda_warns_that_it_takes_long(tmp_path, monkeypatch, caplog):
    """detector.compile=true on the CPU runs (torch.compile; replaced here by a counting identity), but with a
    warning: compiling took >30 min on 2 cores and was slower than eager on an H200."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    train, test = _toy()
    with caplog.at_level("WARNING", logger="cai.detect.trainer"):
        _trainer(tmp_path / "c", selection="last", epochs=1, compile=True).fit(train, test)
    assert len(compiled) == 1 and "detector.compile=true on cpu" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cai.detect.trainer"):
        _trainer(tmp_path / "e", selection="last", epochs=1).fit(train, test)
    assert len(compiled) == 1 and "detector.compile" not in caplog.text


def test_resume_equals_uninterrupted(tmp_path):
    train, test = _toy()
    torch.manual_seed(0)
    full = _trainer(tmp_path / "full").fit(train, test)

    class Stop(Exception):
        pass

    def stop_after_2(epoch, record):
        if epoch == 2:
            raise Stop

    torch.manual_seed(0)
    t = _trainer(tmp_path / "cut")
    t.on_epoch = stop_after_2
    with pytest.raises(Stop):
        t.fit(train, test)
    torch.manual_seed(123)  # a different global state must not matter after resume
    resumed = _trainer(tmp_path / "cut").fit(train, test, resume=True)
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in full["history"]], rel=1e-5)
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_out_of_memory_becomes_a_clear_error(tmp_path):
    from cai.errors import CaiError

    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    train, test = _toy()
    cfg = OmegaConf.create({**CFG, "batch_size": 32})
    trainer = DetectorTrainer(cfg, Exploding, tmp_path, torch.device("cpu"), seed=0)
    with pytest.raises(CaiError) as info:
        trainer.fit(train, test)
    assert "out of memory" in info.value.message and "detector.batch_size=16" in info.value.message


def test_empty_pseudo_mask_is_refused_before_training(tmp_path):
    """An empty mask in the anomalous half would train a normal image as an anomaly: the trainer refuses
    the whole set, naming how many and where, before any epoch runs."""
    from cai.errors import CaiError

    train, test = _toy()
    train.pseudo_masks[[2, 7]] = False
    train.source = tmp_path / "pseudo" / "draem-abc"
    with pytest.raises(CaiError) as info:
        _trainer(tmp_path, epochs=1).fit(train, test)
    message = info.value.message
    assert "2 of 12 pseudo anomalies have an empty mask" in message and "2, 7" in message
    assert str(tmp_path / "pseudo" / "draem-abc") in message
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
