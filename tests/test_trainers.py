import itertools
import json

import pytest
import torch

from dictionary_learning_aligned import AlignedStandardTrainer, AutoEncoder, Dictionary, StandardTrainer, trainSAE
from dictionary_learning_aligned.trainers import get_lr_schedule, get_sparsity_warmup_fn

BASE = dict(activation_dim=32, dict_size=96, layer=3, lm_name="tiny", lr=3e-3, l1_penalty=0.02, warmup_steps=20,
            sparsity_warmup_steps=50, seed=0, device="cpu")


def train(trainer, data, steps):
    for step, x in zip(range(steps), data):
        trainer.update(step, x)
    return trainer


@pytest.mark.parametrize("mode", ["project", "rescale", "projection", "tied"])
def test_constraint_holds_after_many_steps(lowrank_data, mode):
    tr = train(AlignedStandardTrainer(steps=400, alignment=mode, **BASE), lowrank_data(), 400)
    a = (tr.ae.W_enc * tr.ae.W_dec.T).sum(-1)
    assert a.dtype == torch.float32
    assert (a - 1).abs().max() < 1e-5
    assert torch.allclose(tr.ae.W_dec.norm(dim=0), torch.ones(96), atol=1e-5)


def test_standard_is_not_aligned_and_learns(lowrank_data):
    data = lowrank_data()
    tr = StandardTrainer(steps=400, **BASE)
    first = tr.loss(next(data), step=400).item()
    train(tr, data, 400)
    a = (tr.ae.W_enc * tr.ae.W_dec.T).sum(-1)
    assert (a - 1).abs().max() > 0.1
    assert tr.loss(next(data), step=400).item() < 0.5 * first


def test_penalty_pulls_scores_toward_one(lowrank_data):
    free = train(StandardTrainer(steps=300, **BASE), lowrank_data(), 300)
    pen = train(StandardTrainer(steps=300, alignment="penalty", alignment_penalty=10.0, **BASE), lowrank_data(), 300)
    err = lambda t: float(((t.ae.W_enc.detach() * t.ae.W_dec.detach().T).sum(-1) - 1).abs().mean())
    assert err(pen) < 0.2 * err(free)


def test_config_contents():
    cfg = AlignedStandardTrainer(steps=100, **BASE).config
    for key in ("trainer_class", "dict_class", "activation_dim", "dict_size", "layer", "lm_name", "lr", "seed",
                "alignment", "l1_penalty", "warmup_steps", "sparsity_warmup_steps"):
        assert key in cfg, key
    assert cfg["trainer_class"] == "AlignedStandardTrainer" and cfg["dict_class"] == "AutoEncoder"
    assert cfg["alignment"] == "project" and cfg["dict_size"] == 96 and cfg["layer"] == 3
    json.dumps(cfg)
    assert StandardTrainer(steps=100, **BASE).config["alignment"] is None


def test_defaults_match_dictionary_learning():
    tr = StandardTrainer(steps=10_000, activation_dim=8, dict_size=16, layer=0, lm_name="m", device="cpu")
    c = tr.config
    assert (c["lr"], c["l1_penalty"], c["warmup_steps"], c["sparsity_warmup_steps"]) == (1e-3, 0.1, 1000, 2000)
    assert c["decay_start"] is None and c["resample_steps"] is None


def test_same_seed_same_init_and_logging_parameters():
    a = StandardTrainer(steps=100, **BASE)
    b = AlignedStandardTrainer(steps=100, **BASE)
    assert torch.equal(a.ae.W_dec, b.ae.W_dec)
    assert "dead_fraction_10M" in a.get_logging_parameters()


def test_dead_feature_tracking(lowrank_data):
    tr = StandardTrainer(steps=100, **BASE)
    with torch.no_grad():
        tr.ae.b_enc[:10] = -1e4  # these can never fire
    train(tr, lowrank_data(batch=64), 5)
    assert (tr.tokens_since_fired[:10] == 5 * 64).all()
    assert (tr.tokens_since_fired[10:] < 5 * 64).any()
    assert tr.dead_mask(window_tokens=320)[:10].all()


def test_resampling_revives_dead_features(lowrank_data):
    tr = StandardTrainer(steps=100, resample_steps=20, **{**BASE, "warmup_steps": 5})
    with torch.no_grad():
        tr.ae.b_enc[:10] = -1e4
    train(tr, lowrank_data(batch=64), 21)
    assert (tr.ae.b_enc[:10] == 0).all()
    assert tr.tokens_since_fired[:10].max() < 64 * 20 // 2


def test_schedules():
    lr = get_lr_schedule(100, 10, decay_start=80)
    assert lr(0) == 0 and lr(5) == 0.5 and lr(50) == 1 and lr(90) == 0.5
    sp = get_sparsity_warmup_fn(100, 20)
    assert sp(0) == 0 and sp(10) == 0.5 and sp(60) == 1
    with pytest.raises(ValueError, match="warmup_steps"):
        get_lr_schedule(100, 100)
    with pytest.raises(ValueError, match="decay_start"):
        get_lr_schedule(100, 10, decay_start=5)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(steps=0), "steps must be a positive"),
    (dict(lr=-1.0), "lr must be a positive"),
    (dict(l1_penalty=-0.1), "l1_penalty"),
    (dict(alignment="penalty"), "needs alignment_penalty"),
    (dict(alignment="bogus"), "unknown alignment mode"),
    (dict(dict_size=0), "dict_size must be a positive integer"),
])
def test_bad_trainer_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        StandardTrainer(**{**BASE, "steps": 100, **kwargs})


def test_aligned_trainer_refuses_resampling_and_none():
    with pytest.raises(ValueError, match="does not resample"):
        AlignedStandardTrainer(steps=100, resample_steps=10, **BASE)
    with pytest.raises(ValueError, match="needs an alignment mode"):
        AlignedStandardTrainer(steps=100, alignment=None, **BASE)
