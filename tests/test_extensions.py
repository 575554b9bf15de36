"""JumpReLU and Matryoshka BatchTopK (extensions, not in the paper): dictionary_learning's math, tiny CPU training
runs, aligned twins, save/load, dictionary_learning checkpoints, the registry."""

import json

import pytest
import torch

from dictionary_learning_aligned import Dictionary, alignment_scores, registry, trainSAE
from dictionary_learning_aligned.trainers.jumprelu import (AlignedJumpReluTrainer, JumpReluAutoEncoder,
                                                           JumpReluTrainer)
from dictionary_learning_aligned.trainers.matryoshka import (AlignedMatryoshkaBatchTopKTrainer,
                                                             MatryoshkaBatchTopKSAE, MatryoshkaBatchTopKTrainer,
                                                             group_sizes_from_fractions)

TINY = dict(activation_dim=16, dict_size=64, layer=0, lm_name="tiny", device="cpu", seed=0, warmup_steps=2)
EXTRA = {JumpReluTrainer: dict(target_l0=6, lr=1e-3, sparsity_warmup_steps=4),
         MatryoshkaBatchTopKTrainer: dict(k=4, group_fractions=(0.25, 0.25, 0.5), threshold_start_step=4)}


def _data(n=12, batch=64, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=g) for _ in range(n)]


def test_registered_as_extensions():
    assert {"jumprelu", "matryoshka"} <= set(registry.names())
    assert not {"jumprelu", "matryoshka"} & set(registry.names(in_paper_only=True))
    jr, mt = registry.get("jumprelu"), registry.get("matryoshka")
    assert (jr.trainer, jr.aligned_trainer, jr.sparsity_param) == (JumpReluTrainer, AlignedJumpReluTrainer, "target_l0")
    assert (mt.trainer, mt.aligned_trainer, mt.sparsity_param) == (MatryoshkaBatchTopKTrainer,
                                                                   AlignedMatryoshkaBatchTopKTrainer, "k")
    assert jr.dict_class is JumpReluAutoEncoder and mt.dict_class is MatryoshkaBatchTopKSAE


@pytest.mark.parametrize("base", [JumpReluTrainer, MatryoshkaBatchTopKTrainer])
def test_tiny_training_aligned_twin_and_round_trip(tmp_path, base):
    aligned = registry.for_trainer(base).aligned_trainer
    configs = [dict(trainer=cls, steps=12, **TINY, **EXTRA[base]) for cls in (base, aligned)]
    trainers = trainSAE(_data(), configs, steps=12, save_dir=tmp_path / "run", log_steps=4, device="cpu")
    x = _data(1, seed=1)[0]
    for i, tr in enumerate(trainers):
        assert tr.steps_done == 12 and all(torch.isfinite(torch.tensor(e["loss"])) for e in tr.log)
        cfg = json.loads((tmp_path / "run" / f"trainer_{i}" / "config.json").read_text())["trainer"]
        assert cfg["trainer_class"] == configs[i]["trainer"].__name__
        for name in base.config_fields:  # the architecture's own hyperparameters land in config.json
            assert cfg[name] == json.loads(json.dumps(getattr(tr, name))), name
        loaded = Dictionary.from_pretrained(tmp_path / "run" / f"trainer_{i}")
        assert type(loaded) is base.dict_class
        tr.ae.eval()
        assert torch.allclose(loaded(x), tr.ae(x), atol=1e-5)  # save/load round trip (norm factor 1)
        scores = alignment_scores(loaded)
        if tr.alignment is None:
            assert (scores - 1).abs().max() > 1e-3  # standard training moves away from a_i = 1
        else:
            assert (scores - 1).abs().max() < 1e-5, tr.alignment
    assert trainers[1].alignment == "project"


def test_jumprelu_threshold_learns_and_bad_inputs():
    tr = JumpReluTrainer(steps=10, **TINY, **EXTRA[JumpReluTrainer])
    before = tr.ae.threshold.detach().clone()
    for step, x in enumerate(_data(10)):
        tr.update(step, x)
    assert not torch.equal(before, tr.ae.threshold.detach())  # the straight-through estimator reaches it
    assert tr.optimizer.param_groups[0]["betas"] == (0.0, 0.999)
    for bad in (dict(bandwidth=0), dict(target_l0=-1), dict(sparsity_penalty=float("inf"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            JumpReluTrainer(steps=10, **TINY, **bad)
    with pytest.raises(ValueError, match="initial_threshold"):
        JumpReluAutoEncoder(4, 8, initial_threshold=-1.0)


def test_matryoshka_groups_and_bad_inputs():
    assert group_sizes_from_fractions(100, (0.25, 0.25, 0.5)) == [25, 25, 50]
    assert group_sizes_from_fractions(10, (1 / 3, 1 / 3, 1 / 3)) == [3, 3, 4]
    with pytest.raises(ValueError, match="summing to 1"):
        group_sizes_from_fractions(64, (0.5, 0.4))
    with pytest.raises(ValueError, match="empty group"):
        group_sizes_from_fractions(4, (0.1, 0.9))
    with pytest.raises(ValueError, match="group_weights"):
        MatryoshkaBatchTopKTrainer(steps=10, **TINY, k=4, group_fractions=(0.5, 0.5), group_weights=(1.0,))
    assert not MatryoshkaBatchTopKTrainer(steps=10, **TINY, k=4, sparse_decode=True).sparse_decode  # ignored
    with pytest.raises(ValueError, match="group_sizes"):
        MatryoshkaBatchTopKSAE(4, 8, k=2, group_sizes=[4, 3])
    ae = MatryoshkaBatchTopKSAE(4, 8, k=2, group_sizes=[2, 2, 4])
    assert ae.group_bounds == [(0, 2), (2, 4), (4, 8)] and ae.dictionary_config()["group_sizes"] == [2, 2, 4]


# ----------------------------------------------------------------- dictionary_learning 0.1.0: same math, its files

def _dl():
    return pytest.importorskip("dictionary_learning.trainers.jumprelu", reason="pip install --no-deps "
                               "dictionary-learning==0.1.0 for the comparison with dictionary_learning")


def _load_into_ours(cls, dl_ae_or_state):
    state = dl_ae_or_state if isinstance(dl_ae_or_state, dict) else dl_ae_or_state.state_dict()
    kwargs, state = cls.from_dictionary_learning_state(state)
    ours = cls(**kwargs)
    ours.load_state_dict(state)
    return ours


def test_jumprelu_loss_and_gradients_match_dictionary_learning():
    dl = _dl()
    torch.manual_seed(0)
    theirs = dl.JumpReluTrainer(steps=100, warmup_steps=2, activation_dim=16, dict_size=64, layer=0, lm_name="tiny", device="cpu",
                                target_l0=6, sparsity_warmup_steps=4, bandwidth=0.05)
    with torch.no_grad():
        theirs.ae.b_enc.normal_(0, 0.1)
        theirs.ae.b_dec.normal_(0, 0.1)
        theirs.ae.threshold.uniform_(0.0, 0.3)
    ours = JumpReluTrainer(steps=100, **TINY, target_l0=6, sparsity_warmup_steps=4, bandwidth=0.05)
    ours.ae.load_state_dict(_load_into_ours(JumpReluAutoEncoder, theirs.ae).state_dict())
    x = _data(1)[0]
    assert torch.allclose(ours.ae.encode(x), theirs.ae.encode(x), atol=1e-6)
    loss_theirs, loss_ours = theirs.loss(x, step=10), ours.loss(x, step=10)
    loss_theirs.backward()
    loss_ours.backward()
    assert torch.allclose(loss_ours, loss_theirs, rtol=1e-5)
    assert theirs.ae.threshold.grad.abs().sum() > 0
    assert torch.allclose(ours.ae.threshold.grad, theirs.ae.threshold.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours.ae.W_enc.grad, theirs.ae.W_enc.grad.T, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours.ae.W_dec.grad, theirs.ae.W_dec.grad.T, rtol=1e-4, atol=1e-6)


def test_matryoshka_loss_and_gradients_match_dictionary_learning():
    _dl()
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer as Theirs

    torch.manual_seed(0)
    kw = dict(steps=100, warmup_steps=2, activation_dim=16, dict_size=64, k=4, layer=0, lm_name="tiny", device="cpu",
              group_fractions=[0.25, 0.25, 0.5], group_weights=[0.5, 0.3, 0.2])
    theirs = Theirs(**kw)
    with torch.no_grad():
        theirs.ae.b_dec.normal_(0, 0.1)
    ours = MatryoshkaBatchTopKTrainer(**kw, seed=0)
    ours.ae.load_state_dict(_load_into_ours(MatryoshkaBatchTopKSAE, theirs.ae).state_dict())
    x = _data(1)[0]
    loss_theirs, loss_ours = theirs.loss(x, step=0), ours.loss(x, step=0)
    loss_theirs.backward()
    loss_ours.backward()
    assert torch.allclose(loss_ours, loss_theirs, rtol=1e-5)
    assert torch.allclose(ours.ae.W_enc.grad, theirs.ae.W_enc.grad.T, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours.ae.W_dec.grad, theirs.ae.W_dec.grad.T, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["jumprelu", "matryoshka"])
def test_dictionary_learning_checkpoint_loads(tmp_path, name):
    """An ae.pt + config.json written by dictionary_learning 0.1.0 maps onto our class with the same function."""
    _dl()
    from dictionary_learning.dictionary import JumpReluAutoEncoder as DLJump
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE as DLMat

    torch.manual_seed(0)
    theirs = DLJump(16, 64) if name == "jumprelu" else DLMat(16, 64, k=4, group_sizes=[16, 16, 32])
    with torch.no_grad():
        theirs.b_enc.normal_(0, 0.1)
        theirs.threshold.fill_(0.05)
    torch.save(theirs.state_dict(), tmp_path / "ae.pt")
    state = torch.load(tmp_path / "ae.pt", weights_only=True)
    ours = _load_into_ours(registry.get(name).dict_class, state)
    x = _data(1)[0]
    if name == "jumprelu":
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    else:
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-5)
        assert torch.allclose(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)), atol=1e-5)
    with pytest.raises(ValueError, match="not a dictionary_learning"):
        type(ours).from_dictionary_learning_state({"W_enc": state["W_enc"]})


# ----------------------------------------------------------------- SAEBench adapter: the dictionary's own encode

class _SquaredReLU(Dictionary):
    """A user's dictionary class, registered nowhere: the adapter must still accept it."""

    def __init__(self, activation_dim, dict_size, alignment=None):
        super().__init__(activation_dim, dict_size, alignment)
        self._init_weights()

    def encode(self, x):
        return torch.relu(self._affine_encode(x)).pow(2)

    def decode(self, f):
        return self._affine_decode(f)


@pytest.mark.parametrize("make,label", [
    (lambda: JumpReluAutoEncoder(16, 64, alignment="project", initial_threshold=0.05), "jumprelu"),
    (lambda: MatryoshkaBatchTopKSAE(16, 64, k=4, group_sizes=[16, 16, 32]), "matryoshka_batch_topk"),
    (lambda: _SquaredReLU(16, 64), "_SquaredReLU")])
def test_saebench_adapter_uses_the_dictionary_encode(make, label):
    pytest.importorskip("sae_bench")
    from benchmarks.saebench.adapter import to_saebench

    torch.manual_seed(0)
    ae = make()
    with torch.no_grad():
        ae.b_enc.normal_(0, 0.1)
        ae.W_dec.mul_(torch.rand(64) + 0.5)  # decoder columns not unit norm: the adapter rescales
    sae = to_saebench(ae, "smollm2-135m-instruct", 3)
    assert sae.cfg.architecture == label and sae.check_decoder_norms()
    x = torch.randn(5, 7, 16)
    with torch.no_grad():
        f_ours, f_sb = ae.encode(x), sae.encode(x)
        assert (f_ours > 0).any() and torch.equal(f_ours > 0, f_sb > 0)
        assert torch.allclose(f_sb, f_ours * sae.feature_scale, atol=1e-5)
        assert torch.allclose(sae(x), ae(x), atol=1e-4)


# ----------------------------------------------------------------- every consumer knows them through the registry

def test_reproduction_demo_and_train_build_the_extensions():
    from dictionary_learning_aligned import demo
    from dictionary_learning_aligned.experiments import EXPERIMENTS, resolve
    from dictionary_learning_aligned.reproduce import trainer_config
    from dictionary_learning_aligned.train import grid_configs
    from dictionary_learning_aligned.training import _build_trainer

    assert not EXPERIMENTS["extensions"].in_paper and EXPERIMENTS["main"].in_paper
    plan = resolve("extensions", "smoke")
    assert {(r.arch, r.sparsity_name) for r in plan.runs} == {("jumprelu", "target_l0"), ("matryoshka", "k")}
    assert {r.sparsity_value for r in plan.runs} == {8, 32} and {r.alignment for r in plan.runs} == {None, "project"}
    configs = [trainer_config(r, 16, 40, plan) for r in plan.runs if r.seed == 0]
    configs += [c for _, c in demo.trainer_configs(demo.DemoConfig(arch="jumprelu,matryoshka", dict_size=256, k=8),
                                                   16, 40)]
    configs += [{**c, "steps": 40, "activation_dim": 16, "layer": 0, "lm_name": "t", "warmup_steps": 2,
                 **({"sparsity_warmup_steps": 4} if "JumpRelu" in c["trainer"] else {})}
                for c in grid_configs(["jumprelu", "matryoshka"], [None, "project"], [256], [0], k=8)]
    built = [_build_trainer(c, "cpu") for c in configs]
    assert {type(t).__name__ for t in built} == {"JumpReluTrainer", "AlignedJumpReluTrainer",
                                                 "MatryoshkaBatchTopKTrainer", "AlignedMatryoshkaBatchTopKTrainer"}
    for t in built:
        assert t.config.get("target_l0", t.config.get("k")) in (8, 32)
        assert t.sparsity_warmup_steps == (4 if isinstance(t, JumpReluTrainer) else None)
    with pytest.raises(ValueError, match="unknown arch"):
        demo.trainer_configs(demo.DemoConfig(arch="nope"), 16, 40)


def test_current_k_assignment_is_checked():
    tr = MatryoshkaBatchTopKTrainer(steps=10, **TINY, k=4)
    tr.current_k = 6
    assert tr.current_k == 6 and int(tr.ae.k) == 6
    for bad in (0, 65, 2.5, True):
        with pytest.raises(ValueError, match="current_k"):
            tr.current_k = bad
    assert tr.current_k == 6 and int(tr.ae.k) == 6  # unchanged after a refused value


@pytest.mark.parametrize("make", [lambda: JumpReluAutoEncoder(16, 64, initial_threshold=0.05),
                                  lambda: JumpReluAutoEncoder(16, 64, apply_b_dec_to_input=True),
                                  lambda: MatryoshkaBatchTopKSAE(16, 64, k=4, group_sizes=[16, 48])])
def test_scale_biases_folds_the_activation_scale(make):
    """trainSAE folds the normalization factor into the weights: the dictionary then reads raw activations."""
    import copy

    torch.manual_seed(0)
    ae = make()
    with torch.no_grad():
        ae.b_enc.normal_(0, 0.1)
        ae.b_dec.normal_(0, 0.1)
        ae.threshold.fill_(0.05)
    raw = copy.deepcopy(ae)
    raw.scale_biases(3.0)
    x = _data(1)[0]
    assert torch.allclose(raw.encode(3 * x), 3 * ae.encode(x), atol=1e-5)
    assert torch.allclose(raw(3 * x), 3 * ae(x), atol=1e-4)
