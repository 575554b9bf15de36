import json

import pytest
import torch

from dictionary_learning_aligned import AlignedStandardTrainer, Dictionary, StandardTrainer, alignment_scores, trainSAE

CFG = dict(activation_dim=32, dict_size=64, layer=1, lm_name="tiny", lr=3e-3, l1_penalty=0.02, warmup_steps=1,
           sparsity_warmup_steps=2, seed=0)


def scaled(data, scale):
    for x in data:
        yield x * scale


@pytest.mark.parametrize("normalize", [False, True])
def test_trainsae_outputs_and_roundtrip(tmp_path, lowrank_data, normalize):
    configs = [dict(trainer=StandardTrainer, steps=60, **CFG), dict(trainer="AlignedStandardTrainer", steps=60, **CFG)]
    trainers = trainSAE(scaled(lowrank_data(), 40.0), configs, steps=60, save_dir=tmp_path / "run", log_steps=20,
                        save_steps=[30], normalize_activations=normalize, device="cpu")
    s = trainers[0].norm_factor
    assert (s > 10) if normalize else (s == 1.0)
    x = next(scaled(lowrank_data(seed=9), 40.0))
    for i, tr in enumerate(trainers):
        d = tmp_path / "run" / f"trainer_{i}"
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["norm_factor"] == pytest.approx(s)
        assert cfg["trainer"]["trainer_class"] == type(tr).__name__
        assert cfg["steps_done"] == 60
        assert (d / "checkpoints" / "step_30" / "ae.safetensors").is_file()
        loaded = Dictionary.from_pretrained(d)
        # the loaded dictionary reads raw activations and reproduces the trained one exactly
        expected = tr.ae(x / s) * s
        assert torch.allclose(loaded(x), expected, rtol=1e-4, atol=1e-3 * float(x.abs().mean()))
        assert torch.allclose(alignment_scores(loaded), alignment_scores(tr.ae))
        assert len(tr.log) == 3 and {"l0", "alignment_frac_within_0.1_of_1", "dead_fraction_10M"} <= set(tr.log[0])
    assert trainers[1].log[-1]["alignment_frac_within_0.1_of_1"] == 1.0


def test_trainers_see_identical_batches(lowrank_data):
    seen = [[], []]

    class Spy(StandardTrainer):
        def update(self, step, activations):
            seen[self.seed].append(activations.clone())
            super().update(step, activations)

    trainSAE(lowrank_data(), [dict(trainer=Spy, steps=5, **{**CFG, "seed": 0}),
                              dict(trainer=Spy, steps=5, **{**CFG, "seed": 1})], steps=5, device="cpu")
    assert len(seen[0]) == 5 and all(torch.equal(a, b) for a, b in zip(*seen))


def test_existing_output_is_not_overwritten(tmp_path, lowrank_data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        trainSAE(lowrank_data(), [dict(trainer=StandardTrainer, steps=3, **CFG)], steps=3, save_dir=out, device="cpu")
    assert (out / "precious.txt").read_text() == "keep me"


def test_data_running_out_stops_and_saves(tmp_path, lowrank_data):
    data = [x for _, x in zip(range(4), lowrank_data())]
    (tr,) = trainSAE(data, [dict(trainer=StandardTrainer, steps=10, **CFG)], steps=10, save_dir=tmp_path / "r",
                     device="cpu")
    assert tr.steps_done == 4
    assert json.loads((tmp_path / "r" / "trainer_0" / "config.json").read_text())["steps_done"] == 4


@pytest.mark.parametrize("kwargs,err", [
    (dict(steps=0), "steps must be a positive"),
    (dict(trainer_configs=[]), "trainer_configs is empty"),
    (dict(trainer_configs=[dict(steps=3, **CFG)]), "needs a 'trainer' key"),
    (dict(trainer_configs=[dict(trainer="NoSuchTrainer", steps=3, **CFG)]), "unknown trainer"),
])
def test_bad_trainsae_arguments(lowrank_data, kwargs, err):
    args = dict(data=lowrank_data(), trainer_configs=[dict(trainer=StandardTrainer, steps=3, **CFG)], steps=3,
                device="cpu")
    args.update(kwargs)
    with pytest.raises(ValueError, match=err):
        trainSAE(**args)


def test_nonfinite_activations_are_refused(lowrank_data):
    bad = [torch.full((8, 32), float("nan"))]
    with pytest.raises(ValueError, match="NaN or infinite"):
        trainSAE(bad, [dict(trainer=StandardTrainer, steps=3, **CFG)], steps=3, device="cpu")


def test_tokens_seen_counts_a_short_last_batch_and_survives_resume(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(n, 32, generator=g) for n in (100, 100, 100, 30)]
    cfg = [dict(trainer=StandardTrainer, steps=4, **CFG)]
    (tr,) = trainSAE(iter(data), cfg, steps=4, device="cpu")
    assert tr.tokens_seen == 330 and tr.steps_done == 4
    trainSAE(iter(data[:2]), cfg, steps=4, save_dir=tmp_path / "r", save_steps=[1], device="cpu")
    (resumed,) = trainSAE(iter(data), cfg, steps=4, save_dir=tmp_path / "r", resume=True, device="cpu")
    assert resumed.tokens_seen == 330
