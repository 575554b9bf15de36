"""SAEBench probing/SCR/TPP/autointerp results on SmolLM2 made before the harness prepended BOS (commit 5190b3e)
are flagged by the table and the figures, and the harness now records that BOS was prepended."""

import json
import types

from dictionary_learning_aligned.records import write_record
from figures.saebench_results import made_without_bos, saebench_bos_caveat
from figures.tables import saebench_table
from tests.test_figures import make_record

SM2 = {"model_name": "smollm2-135m-instruct", "source": "converted"}


def _scr(rid: str, model: dict) -> dict:
    return {"record_id": rid, "eval_type_id": "scr", "model": model,
            "eval_result_metrics": {"scr_metrics": {"scr_metric_threshold_20": 0.1}}}


def test_made_without_bos_only_for_smollm2_inputs_of_the_bos_sensitive_evals():
    assert made_without_bos(_scr("r", SM2))
    assert not made_without_bos(_scr("r", {**SM2, "tokenizer_prepends_bos": True}))
    assert not made_without_bos(_scr("r", {"model_name": "gemma-3-270m"}))  # Gemma's tokenizer adds BOS
    assert not made_without_bos({**_scr("r", SM2), "eval_type_id": "core"})  # core adds its own BOS


def _store_with(tmp_path, model: dict):
    store = tmp_path / "store"
    rec = make_record("relu", None, 0.02, 0)
    write_record(store, rec)
    folder = store / "saebench" / rec["id"]
    folder.mkdir(parents=True)
    (folder / "scr.json").write_text(json.dumps(_scr(rec["id"], model)))
    return store


def test_table_says_when_results_predate_the_fix(tmp_path):
    old = saebench_table(_store_with(tmp_path / "old", SM2))
    assert "Caveat: 1 SAEBench" in old and "5190b3e" in old
    new = saebench_table(_store_with(tmp_path / "new", {**SM2, "tokenizer_prepends_bos": True}))
    assert "Caveat" not in new
    assert saebench_bos_caveat(tmp_path / "old" / "store", ["autointerp"]) is None  # only SCR there


def test_harness_records_that_bos_was_prepended():
    from benchmarks.saebench.runner import RunSpec, _load_model

    cfg = types.SimpleNamespace(tokenizer_prepends_bos=True, d_model=8, n_layers=2)
    spec = RunSpec(dictionaries=[], evals=["scr"], out=None, model=(types.SimpleNamespace(cfg=cfg), dict(SM2)))
    _, info = _load_model(spec, [], "smollm2-135m-instruct", None, print)
    assert info["tokenizer_prepends_bos"] is True


def test_table_shows_core_fve_per_token(tmp_path):
    store = tmp_path / "store"
    rec = make_record("relu", None, 0.02, 0)
    write_record(store, rec)
    folder = store / "saebench" / rec["id"]
    folder.mkdir(parents=True)
    core = {"record_id": rec["id"], "eval_type_id": "core", "model": SM2,
            "eval_result_metrics": {"reconstruction_quality": {"explained_variance": -2.5,
                                                               "explained_variance_legacy": 0.861}}}
    (folder / "core.json").write_text(json.dumps(core))
    table = saebench_table(store)
    assert "core FVE per token" in table and "0.861" in table and "-2.500" in table
