"""A results store that already holds a record under a run's id, but of another scale, model or layer: record ids
name the experiment, architecture, alignment, dict_size, sparsity and seed only, so the faithful store's
scale-small SmolLM2 records (``main__relu__standard__d4096__l1_penalty0.04__s0``) have the ids that
``reproduce main --scale paper`` (Pythia) would write. Such a record must not count as that run's."""

import gzip
import json

import pytest

from dictionary_learning_aligned.experiments import resolve
from dictionary_learning_aligned.records import REQUIRED, has_record, write_record
from dictionary_learning_aligned.reproduce.recording import _rid
from dictionary_learning_aligned.reproduce.selection import select_runs


def _record_of(plan, run, **changes):
    """A minimal complete record of ``run`` of ``plan`` (its scale, model and layer), with ``changes``."""
    rec = {k: None for k in REQUIRED}
    rec.update({"schema": 1, "id": _rid(run), "experiment": plan.experiment.name, "scale": plan.scale,
                "model": plan.model, "layer": plan.layer, "arch": run.arch, "dict_size": run.dict_size,
                "seed": run.seed})
    rec.update(changes)
    return rec


def test_a_record_of_another_scale_under_the_same_id_is_refused_not_counted_as_done(tmp_path):
    small, paper = resolve("main", "small"), resolve("main", "paper")
    run = paper.runs[0]
    assert _rid(run) == _rid(small.runs[0])  # the ids do not tell the scales apart
    path = write_record(tmp_path, _record_of(small, small.runs[0]))
    assert len(select_runs(small, tmp_path)) == len(small.runs) - 1  # the same scale: done, skipped
    with pytest.raises(ValueError) as e:
        select_runs(paper, tmp_path)  # was: skipped, as if the Pythia run were done
    msg = str(e.value)
    assert path.name in msg and "scale small" in msg and "scale paper" in msg and "--results" in msg


@pytest.mark.parametrize("field, value", [("model", "some-other-model"), ("layer", 3)])
def test_a_record_of_another_model_or_layer_under_the_same_id_is_refused(tmp_path, field, value):
    plan = resolve("ablations", "smoke")
    run = plan.runs[0]
    write_record(tmp_path, _record_of(plan, run, **{field: value}))
    with pytest.raises(ValueError, match=f"{field} {value}"):
        select_runs(plan, tmp_path)


def test_a_record_without_a_layer_still_counts_and_has_record_alone_checks_nothing_more(tmp_path):
    plan = resolve("ablations", "smoke")
    run = plan.runs[0]
    rec = _record_of(plan, run)
    del rec["layer"]  # not a required field: such a record is compared on what it has
    path = write_record(tmp_path, rec)
    path.with_suffix(".json.gz").write_bytes(gzip.compress(json.dumps(rec).encode()))
    path.unlink()
    assert run not in select_runs(plan, tmp_path)
    assert has_record(tmp_path, rec["id"])
    assert has_record(tmp_path, rec["id"], expect={"scale": plan.scale, "model": plan.model, "layer": 99})
    with pytest.raises(ValueError, match="scale smoke"):
        has_record(tmp_path, rec["id"], expect={"scale": "paper"})


@pytest.mark.parametrize("name, content", [
    ("cfg.json", {"architecture": "standard", "d_in": 576, "d_sae": 16384, "hook_name": "blocks.12.hook_resid_post"}),
    ("config.json", {"sae": {"expansion_factor": 32, "k": 32}, "batch_size": 8, "hookpoints": ["layers.12"]}),
])
def test_a_foreign_json_in_records_is_named_as_not_a_record(tmp_path, name, content):
    """A SAELens cfg.json or a sparsify config.json dropped into records/: the error says the file is not a record
    of this library and what it holds (it said 'has schema None, expected 1', as if it were an old record)."""
    from dictionary_learning_aligned.records import iter_records

    (tmp_path / "records").mkdir()
    (tmp_path / "records" / name).write_text(json.dumps(content))
    with pytest.raises(ValueError) as e:
        list(iter_records(tmp_path))
    msg = str(e.value)
    assert name in msg and "not a record of this library" in msg and "no 'schema'" in msg
    assert next(iter(content)) in msg and "schema None" not in msg
