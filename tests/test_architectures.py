import itertools

import pytest
import torch

from dictionary_learning_aligned import (AlignedBatchTopKTrainer, AlignedPAnnealTrainer, AlignedStandardTrainer,
                                         AlignedTopKTrainer, AutoEncoderTopK, BatchTopKSAE, BatchTopKTrainer,
                                         Dictionary, PAnnealTrainer, StandardTrainer, TopKTrainer, alignment_scores,
                                         stability, trainSAE)
from dictionary_learning_aligned import registry
from dictionary_learning_aligned.trainers import TRAINER_CLASSES, geometric_median

#: the trainers of the paper's four architectures (the extensions have their own tests, test_extensions.py)
PAPER_TRAINERS = [t for a in registry.architectures() if a.in_paper for t in (a.trainer, a.aligned_trainer)]

SMALL = dict(activation_dim=32, dict_size=96, layer=3, lm_name="tiny", seed=0, device="cpu")
EXTRA = {
    StandardTrainer: dict(l1_penalty=0.02, warmup_steps=5, sparsity_warmup_steps=10, lr=3e-3),
    TopKTrainer: dict(k=8, warmup_steps=5, threshold_start_step=10, lr=3e-3),
    BatchTopKTrainer: dict(k=8, warmup_steps=5, threshold_start_step=10, lr=3e-3),
    PAnnealTrainer: dict(initial_sparsity_penalty=0.02, warmup_steps=5, sparsity_warmup_steps=10, anneal_start=20,
                         n_sparsity_updates=4, lr=3e-3),
}
ALIGNED = {AlignedStandardTrainer: StandardTrainer, AlignedTopKTrainer: TopKTrainer,
           AlignedBatchTopKTrainer: BatchTopKTrainer, AlignedPAnnealTrainer: PAnnealTrainer}


def args_for(cls, steps=60, **kw):
    base = ALIGNED.get(cls, cls)
    return {"steps": steps, **SMALL, **EXTRA[base], **kw}


def run(trainer, data, steps):
    for step, x in zip(range(steps), data):
        trainer.update(step, x)
    return trainer


def test_eight_trainers_registered():
    assert len(PAPER_TRAINERS) == 8 and set(PAPER_TRAINERS) <= set(TRAINER_CLASSES.values())
    for aligned, base in ALIGNED.items():
        assert issubclass(aligned, base) and aligned.__name__ == "Aligned" + base.__name__
        assert aligned.__doc__ and aligned.config is base.config  # nothing but the default alignment differs


def test_topk_exactly_k_and_shapes():
    torch.manual_seed(0)
    ae = AutoEncoderTopK(16, 64, k=5)
    x = torch.randn(10, 16)
    f, vals, idx, pre = ae.encode(x, return_topk=True)
    assert f.shape == (10, 64) and vals.shape == idx.shape == (10, 5) and pre.shape == (10, 64)
    assert ((f != 0).sum(-1) == 5).all()
    x_hat, f2 = ae(x, output_features=True)
    assert x_hat.shape == (10, 16) and torch.equal(f, f2)
    assert torch.allclose(alignment_scores(ae), torch.ones(64), atol=1e-5)  # encoder starts at W_dec.T


def test_batchtopk_k_on_average_and_threshold_at_inference():
    torch.manual_seed(0)
    ae = BatchTopKSAE(16, 64, k=4)
    x = torch.randn(12, 16)
    f = ae.encode(x, use_threshold=False)
    assert int((f != 0).sum()) == 4 * 12
    assert torch.equal(ae.encode(x), f)  # no threshold learned yet: falls back to batch top-k
    ae.threshold.fill_(0.3)
    pre = ae.post_relu(x)
    assert torch.equal(ae.encode(x), pre * (pre > 0.3))


def test_topk_threshold_inference_requires_learned_threshold():
    ae = AutoEncoderTopK(8, 16, k=2)
    with pytest.raises(ValueError, match="no learned threshold"):
        ae.encode(torch.randn(3, 8), use_threshold=True)


@pytest.mark.parametrize("k", [0, -1, 97, 2.0])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be an integer in \\[1, dict_size=96\\]"):
        TopKTrainer(**args_for(TopKTrainer, k=k))


@pytest.mark.parametrize("kw,msg", [
    (dict(p_end=0.0), "p_end must be in \\(0, 1\\]"),
    (dict(p_end=1.5), "p_end must be in \\(0, 1\\]"),
    (dict(p_start=0.0), "p_start must be in"),
    (dict(sparsity_function="L2"), "sparsity_function"),
    (dict(anneal_start=100), "anneal_start"),
])
def test_bad_panneal_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        PAnnealTrainer(**{**args_for(PAnnealTrainer), **kw})


@pytest.mark.parametrize("cls", [TopKTrainer, BatchTopKTrainer, StandardTrainer, PAnnealTrainer])
def test_penalty_mode_needs_lambda(cls):
    with pytest.raises(ValueError, match="needs alignment_penalty"):
        cls(**args_for(cls, alignment="penalty"))


@pytest.mark.parametrize("cls,mode", list(itertools.product(ALIGNED, ["project", "rescale", "projection", "tied"])))
def test_constraint_holds_after_training_every_aligned_variant(lowrank_data, cls, mode):
    tr = run(cls(**args_for(cls, alignment=mode)), lowrank_data(), 60)
    a = alignment_scores(tr.ae)
    assert (a - 1).abs().max() < 1e-5, f"{cls.__name__}/{mode}: max |a-1| = {(a - 1).abs().max()}"
    assert tr.config["alignment"] == mode and tr.config["trainer_class"] == cls.__name__


@pytest.mark.parametrize("cls", [TopKTrainer, BatchTopKTrainer])
def test_threshold_learned_and_roundtrip(tmp_path, lowrank_data, cls):
    (tr,) = trainSAE(lowrank_data(), [dict(trainer=cls, **args_for(cls))], steps=60, save_dir=tmp_path / "r",
                     normalize_activations=True, device="cpu")
    assert tr.ae.threshold > 0
    loaded = Dictionary.from_pretrained(tmp_path / "r" / "trainer_0")
    assert type(loaded) is type(tr.ae) and int(loaded.k) == 8
    s = tr.norm_factor
    assert float(loaded.threshold) == pytest.approx(float(tr.ae.threshold) * s, rel=1e-5)
    x = next(lowrank_data(seed=5))
    assert torch.allclose(loaded(x), tr.ae(x / s) * s, rtol=1e-4, atol=1e-3)
    if cls is TopKTrainer:
        assert ((loaded.encode(x) != 0).sum(-1) == 8).all()


def test_topk_b_dec_starts_at_geometric_median(lowrank_data):
    x = next(lowrank_data())
    tr = TopKTrainer(**args_for(TopKTrainer, lr=1e-12))
    tr.update(0, x)
    assert torch.allclose(tr.ae.b_dec, geometric_median(x), atol=1e-4)
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    assert geometric_median(pts).norm() < 1.0  # robust to the outlier, unlike the mean


def test_auxk_loss_only_with_dead_features(lowrank_data):
    tr = TopKTrainer(**args_for(TopKTrainer, dead_feature_threshold=64))
    x = next(lowrank_data(batch=64))
    log = tr.loss(x, step=0, logging=True)
    assert log.losses["auxk_loss"] == 0.0
    tr.tokens_since_fired[:40] = 10**6
    assert tr.loss(x, step=0, logging=True).losses["auxk_loss"] > 0


def test_panneal_schedule_and_continuity(lowrank_data):
    tr = PAnnealTrainer(**args_for(PAnnealTrainer, steps=100, anneal_start=30, n_sparsity_updates=5,
                                   sparsity_queue_length=1, sparsity_warmup_steps=None))
    data = lowrank_data()
    seen = []
    for step in range(100):
        x = next(data)
        before = (tr.p, tr.sparsity_coeff)
        tr.update(step, x)
        if tr.p != before[0]:
            # the scaled penalty on the batch that measured the switch is unchanged (queue length 1)
            with torch.no_grad():
                f = tr.ae.encode(x)
            old = before[1] * float(tr.lp_norm(f, before[0]))
            new = tr.sparsity_coeff * float(tr.lp_norm(f, tr.p))
            seen.append(before[0])
            assert new == pytest.approx(old, rel=0.05)
    assert tr.p == pytest.approx(0.2) and len(seen) == 4
    assert tr.config["p_end"] == 0.2


def test_stability_definitions():
    torch.manual_seed(0)
    W = torch.randn(64, 128)
    perm = W[:, torch.randperm(128)] * 3.0  # same directions, shuffled and rescaled
    same = stability([W, perm])
    assert same["mcs"] == pytest.approx(1.0, abs=1e-5) and same["frac_above_0.9"] == 1.0
    assert same["hungarian_mean_cos"] == pytest.approx(1.0, abs=1e-5)
    other = stability([W, torch.randn(64, 128), torch.randn(64, 128)])
    assert other["mcs"] < 0.6 and other["frac_above_0.7"] == 0.0 and other["hungarian_mean_cos"] < 0.3
    assert len(other["per_feature_max_cos"]) == 3 and len(other["per_feature_max_cos"][0]) == 128
    assert other["pairwise_mcs"][1][1] == 1.0
    with pytest.raises(ValueError, match="at least two"):
        stability([W])
    with pytest.raises(ValueError, match="different activation_dim"):
        stability([W, torch.randn(32, 128)])
    assert stability([W, perm], hungarian=False)["hungarian_mean_cos"] is None


ALL_TRAINERS = PAPER_TRAINERS
REAL = dict(activation_dim=576, dict_size=256, layer=12, lm_name="smollm2-135m-instruct", device="cpu", seed=0)
REAL_EXTRA = {StandardTrainer: dict(l1_penalty=0.04, warmup_steps=2, sparsity_warmup_steps=3),
              TopKTrainer: dict(k=16, warmup_steps=2, threshold_start_step=2),
              BatchTopKTrainer: dict(k=16, warmup_steps=2, threshold_start_step=2),
              PAnnealTrainer: dict(warmup_steps=2, sparsity_warmup_steps=3, anneal_start=2, n_sparsity_updates=3)}


def test_all_trainers_and_modes_on_real_smollm2_activations(tmp_path, smollm2_activations):
    configs = []
    for cls in ALL_TRAINERS:  # the eight trainers, aligned ones in their default mode
        configs.append(dict(trainer=cls, steps=7, **REAL, **REAL_EXTRA[ALIGNED.get(cls, cls)]))
    for mode in ["rescale", "penalty", "projection", "tied"]:  # the other alignment modes
        configs.append(dict(trainer=TopKTrainer, steps=7, alignment=mode, alignment_penalty=1.0 if mode == "penalty"
                            else None, **REAL, **REAL_EXTRA[TopKTrainer]))
    trainers = trainSAE(smollm2_activations, configs, steps=7, save_dir=tmp_path / "all", log_steps=3,
                        normalize_activations=True, device="cpu")
    x = smollm2_activations[0]
    for i, tr in enumerate(trainers):
        assert tr.steps_done == 7 and all(torch.isfinite(torch.tensor(e["loss"])) for e in tr.log)
        loaded = Dictionary.from_pretrained(tmp_path / "all" / f"trainer_{i}")
        assert torch.isfinite(loaded(x)).all()
        if tr.alignment in ("project", "rescale", "projection", "tied"):
            assert (alignment_scores(loaded) - 1).abs().max() < 1e-4, tr.config
    assert {t.alignment for t in trainers} == {None, "project", "rescale", "penalty", "projection", "tied"}
