"""The harvest precision benchmark (benchmarks/harvest.py) on the CPU, with a tiny random LLaMA: every precision is
timed and compared with float32 on the same contexts, TF32 is reported as a no-op on a CPU, the float32 model and
the matmul precision are left as they were, a real cache is built per precision; and bad flags are refused before
the model is loaded."""
import json

import pytest
import torch

from benchmarks import harvest


@pytest.fixture
def tiny(tiny_lm, smollm2_tokenizer):
    return tiny_lm[0], smollm2_tokenizer


def test_every_precision_is_timed_and_compared_with_float32(tiny, tmp_path):
    hf, tok = tiny
    out = tmp_path / "harvest.json"
    before = torch.get_float32_matmul_precision()
    res = harvest.run(hf, tok, "tiny", 1, "cpu", contexts=6, refresh_batch_size=3, ctx_len=16, e2e_tokens=50,
                      out=str(out), say=lambda line: None)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res)) and res["complete"]
    assert list(res["precisions"]) == ["float32", "tf32", "bfloat16"]
    assert res["contexts"] == 6 and res["forwards"] == 2 and res["activations"] == 6 * 15
    rows = res["precisions"]
    assert [r["float32_matmul_precision"] for r in rows.values()] == ["highest", "high", "highest"]
    assert torch.get_float32_matmul_precision() == before  # restored
    assert next(hf.parameters()).dtype == torch.float32  # the bfloat16 run used a copy
    # on a CPU TF32 does not exist: said so, and the tf32 activations are float32's exactly
    assert not res["tf32"]["applies"] and "no-op" in res["tf32"]["note"]
    assert rows["float32"]["vs_float32"]["rel_err_max"] == 0 and rows["tf32"]["vs_float32"]["rel_err_max"] == 0
    bf16 = rows["bfloat16"]["vs_float32"]
    floor = res["float16_storage"]["rel_err_median"]
    assert 0 < floor < 1e-3 and floor < bf16["rel_err_median"] <= bf16["rel_err_p99"] <= bf16["rel_err_max"] < 0.1
    assert 0.99 < bf16["cos_min"] <= bf16["cos_p01"] <= bf16["cos_median"] < 1
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["step_tokens_per_s"] < r["tokens_per_s"]
        assert set(r["pieces_per_forward"]) == {"tokenization", "forward", "rest"}
        assert 0 <= r["drop"]["decision_differs"] <= 1 and r["drop"]["dropped"] <= 1
        assert r["end_to_end"]["tokens"] == 50 and r["end_to_end"]["harvested"] >= 50
        assert set(r["end_to_end"]["build_seconds"]) == {"waiting_for_batches", "writing", "fsync"}
    assert not list(tmp_path.glob(".*tmp"))  # written atomically
    assert str(tmp_path) not in out.read_text().replace(str(out), "")


def test_errors_are_per_token_relative_error_and_cosine():
    ref = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    acts = torch.tensor([[3.3, 4.4], [1.0, 0.0], [0.0, 2.0]])  # token 0: 1.1 x (relative error 0.1, cosine 1)
    e = harvest.errors(acts, ref)
    assert e["rel_err_max"] == pytest.approx(0.1) and e["rel_err_median"] == 0
    assert e["cos_min"] == pytest.approx(1)
    e = harvest.errors(torch.tensor([[0.0, 5.0], [1.0, 0.0], [0.0, 2.0]]), ref)  # token 0 rotated by 36.9 degrees
    assert e["cos_min"] == pytest.approx(0.8) and e["rel_err_max"] == pytest.approx(((3**2 + 1**2) ** 0.5) / 5)


def test_drop_decisions_count_the_tokens_decided_differently_per_forward_pass():
    ones = torch.ones(10, 4)  # norm 2 each; the median of a forward pass is 2
    ref = [torch.cat([ones, 9 * ones[:1]]), torch.cat([ones, 11 * ones[:1]])]  # 18 <= 10 x 2 < 22: kept, dropped
    acts = [torch.cat([ones, 11 * ones[:1]]), ref[1]]  # the first pass's last token now dropped too
    assert harvest.drop_decisions(acts, ref, 10.0) == pytest.approx({"dropped": 2 / 22, "decision_differs": 1 / 22})


def test_matmul_precision_is_restored_on_error():
    before = torch.get_float32_matmul_precision()
    with pytest.raises(RuntimeError, match="inside"):
        with harvest.matmul_precision("high" if before != "high" else "medium"):
            assert torch.get_float32_matmul_precision() != before
            raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == before


def test_main_runs_the_model_it_loads(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harvest, "load", lambda model, device: tiny)
    out = tmp_path / "new" / "h.json"
    assert harvest.main(["--model", "smollm2", "--layer", "1", "--device", "cpu", "--contexts", "4",
                         "--refresh-batch-size", "2", "--precisions", "bfloat16", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["precisions"]) == ["float32", "bfloat16"] and res["layer"] == 1 and res["ctx_len"] == 128
    assert res["model"] == "smollm2-135m-instruct" and "--precisions bfloat16" in res["command"]
    printed = capsys.readouterr().out
    assert "bfloat16: forward" in printed and "no-op" not in printed  # tf32 not asked for
    assert str(tmp_path) not in out.read_text() and "--out h.json" in res["command"]  # no machine path


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--out", "{tmp}"], ["--out", "{tmp}/file.json/x.json"],
                                  ["--precisions", "fp8"], ["--contexts", "0"], ["--warmup", "-1"],
                                  ["--layer", "-1"], ["--max-norm-multiple", "1"], ["--model", "pythia"],
                                  ["--corpus", "{tmp}/missing.jsonl"]])
def test_bad_flags_are_refused_before_the_model_is_loaded(argv, tmp_path, monkeypatch, capsys):
    (tmp_path / "file.json").write_text("{}")
    monkeypatch.setattr(harvest, "load", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as e:
        harvest.main(["--model", "smollm2", "--device", "cpu", *[a.format(tmp=tmp_path) for a in argv]])
    assert e.value.code == 2 and "error" in capsys.readouterr().err
    assert (tmp_path / "file.json").read_text() == "{}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(harvest, "load", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as e:
        harvest.main(["--model", "smollm2", "--device", "cuda"])
    assert e.value.code == 2 and "--device cpu" in capsys.readouterr().err
