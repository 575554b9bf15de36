import json

from benchmarks import speed


def test_speed_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "speed.json"
    assert speed.main(["--device", "cpu", "--dict-sizes", "64", "--batch", "32", "--steps", "2", "--peak-n", "64",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {r["arch"] for r in res["train"]} == {"relu", "topk", "batchtopk"}
    for r in res["train"]:
        assert r["standard"]["tokens_per_s"] > 0 and r["aligned"]["tokens_per_s"] > 0
        assert abs(r["standard"]["tflops"] - 12 * 576 * 64 * r["standard"]["tokens_per_s"] / 1e12) < 1e-9
    assert res["matmul_peak_tflops"] > 0 and "benchmarks.speed" in res["command"]
