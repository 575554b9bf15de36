"""End to end on the real SmolLM2-135M-Instruct (packaged GGUF) over a few hundred tokens of the bundled corpus."""
import json
import statistics

import pytest

from dictionary_learning_aligned import Dictionary, alignment_scores
from dictionary_learning_aligned.__main__ import main
from dictionary_learning_aligned.demo import DemoConfig, run_demo

TINY = dict(tokens=768, batch_size=128, dict_size=256, ctx_len=64, buffer_ctxs=8, refresh_batch_size=4,
            eval_batches=2, ce_batches=1, ce_batch_size=2, log_steps=2, device="cpu")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, run_demo(DemoConfig(out=str(out), **TINY))


@pytest.mark.slow
def test_demo_outputs(demo_run):
    out, results = demo_run
    assert json.loads((out / "results.json").read_text())["steps_done"] == 6
    assert (out / "alignment_hist.pdf").read_bytes()[:4] == b"%PDF"
    assert (out / "alignment_hist.png").is_file()
    std, ali = results["metrics"]["standard"], results["metrics"]["aligned (project)"]
    assert ali["alignment"]["frac_within_0.1_of_1"] == 1.0
    assert std["alignment"]["frac_within_0.1_of_1"] < 0.5
    # a real language model on real English text: clean CE loss well below uniform (ln 49152 = 10.8)
    assert 1.0 < std["loss_original"] < 6.0
    assert std["loss_zero"] > std["loss_original"]
    for m in (std, ali):
        assert m["n_tokens"] == 256 and m["ce_n_tokens"] == 126
        assert 0 < m["l0"] <= 256 and -5 < m["frac_variance_explained"] <= 1
    for i in (0, 1):
        ae = Dictionary.from_pretrained(out / "dictionaries" / f"trainer_{i}")
        assert ae.activation_dim == 576 and ae.dict_size == 256
    assert (alignment_scores(ae) - 1).abs().max() < 1e-5


@pytest.mark.slow
def test_demo_refuses_existing_output_and_bad_layer(demo_run, capsys):
    out, _ = demo_run
    before = (out / "results.json").read_bytes()
    args = ["demo", "--out", str(out)] + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert main(["demo", "--out", str(out) + "_other", "--layer", "30"] + args[3:]) == 2
    assert "layer 30 out of range: model has 30 layers (0..29)" in capsys.readouterr().err
    assert not (out.parent / (out.name + "_other")).exists()


@pytest.mark.slow
def test_demo_arch_and_seeds(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "o"), arch="panneal", seeds=2, **{**TINY, "tokens": 1024})
    results = run_demo(cfg)
    assert set(results["groups"]) == {"standard", "aligned (project)"}
    assert len(results["metrics"]) == 4 and results["groups"]["standard"] == ["standard seed 0", "standard seed 1"]
    for g in results["groups"]:
        st = results["stability"][g]
        assert 0 < st["mcs"] < 1 and len(st["per_feature_max_cos"]) == 2 and st["hungarian_mean_cos"] is not None
        l0s = [results["metrics"][m]["l0"] for m in results["groups"][g]]
        assert results["summary"][g]["L0"]["n"] == 2
        assert results["summary"][g]["L0"]["std"] == pytest.approx(statistics.stdev(l0s)) and l0s[0] != l0s[1]
    cfgs = [json.loads((tmp_path / "o" / "dictionaries" / f"trainer_{i}" / "config.json").read_text())["trainer"]
            for i in range(4)]
    assert [c["trainer_class"] for c in cfgs] == ["PAnnealTrainer", "AlignedPAnnealTrainer"] * 2
    assert [c["seed"] for c in cfgs] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="unknown arch"):
        run_demo(DemoConfig(out=str(tmp_path / "x"), arch="gated", **TINY))
    with pytest.raises(ValueError, match="k must be in"):
        run_demo(DemoConfig(out=str(tmp_path / "x"), arch="topk", k=0, **TINY))


def test_markdown_summary_shows_std_only_with_several_seeds():
    from dictionary_learning_aligned.demo import MD_ROWS, format_markdown

    def row(n):
        return {label: {"mean": 0.5, "std": 0.01 if n > 1 else 0.0, "n": n} for label in MD_ROWS}

    one = format_markdown({"summary": {"standard": row(1)}})
    three = format_markdown({"summary": {"standard": row(3)}})
    assert "±" not in one and "0.500" in one
    assert three.count("±") == len(MD_ROWS)
