"""Records and figure captions name no file of the machine that wrote them (records.neutral_paths)."""

import json

from dictionary_learning_aligned import records


def _record(**fields):
    rec = {"schema": records.SCHEMA_VERSION, "id": "main__relu__standard__d256__l1_penalty0.04__s0",
           "experiment": "main", "scale": "smoke", "model": "smollm2-135m-instruct", "arch": "relu",
           "alignment": None, "dict_size": 256, "sparsity": {"name": "l1_penalty", "value": 0.04}, "seed": 0,
           "group": "main__relu__standard__d256__l1_penalty0.04", "metrics": {}, "alignment_scores": {},
           "per_feature": {}, "stability": None}
    rec.update(fields)
    return rec


def test_neutral_paths_inside_and_outside_the_store(tmp_path):
    store = tmp_path / "store"
    text = (f"python -m x --results {store} --cache /tmp/dla_cache --corpus /tmp/gpu/files/mixed.jsonl.gz "
            f"--out={store}/runs/a")
    assert records.neutral_paths(text, store) == (
        "python -m x --results store --cache dla_cache --corpus mixed.jsonl.gz --out=store/runs/a")


def test_neutral_paths_leaves_ordinary_text_alone(tmp_path):
    text = "L1 0.04, 1/2 of the tokens, tokens / s, a/b, relative/path/file.txt, done"
    assert records.neutral_paths(text, tmp_path) == text


def test_write_record_stores_neutral_paths_and_keeps_the_callers_dict(tmp_path):
    rec = _record(corpus="/tmp/gpu/files/mixed.jsonl.gz",
                  offline_note="offline substitute: SmolLM2 layer 12 on /tmp/gpu/files/mixed.jsonl.gz instead of X",
                  command=f"python -m r main --results {tmp_path}")
    path = records.write_record(tmp_path, rec)
    stored = json.loads(path.read_text())
    assert stored["corpus"] == "mixed.jsonl.gz"
    assert stored["offline_note"] == "offline substitute: SmolLM2 layer 12 on mixed.jsonl.gz instead of X"
    assert stored["command"] == f"python -m r main --results {tmp_path.name}"
    assert rec["corpus"] == "/tmp/gpu/files/mixed.jsonl.gz"


def test_records_written_before_the_rule_read_neutral(tmp_path):
    (tmp_path / "records").mkdir()
    rec = _record(corpus="/tmp/gpu/files/mixed.jsonl.gz")
    (tmp_path / "records" / f"{rec['id']}.json").write_text(json.dumps(rec))
    (read,) = list(records.iter_records(tmp_path))
    assert read["corpus"] == "mixed.jsonl.gz"
