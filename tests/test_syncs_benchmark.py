"""The sync audit (benchmarks/syncs.py) on a CPU: its dry run's plumbing (emulated synchronisations, the window of
audited steps, the sites named by their frame in this repository, per-step against periodic), and its refusal of
a CUDA device that is not there."""
import json

import pytest
import torch

from benchmarks import syncs


def test_recorder_counts_the_window_steps_and_names_the_calling_line():
    recorder = syncs.SyncRecorder(emulate=True)
    xs = [torch.ones(2) * i for i in range(6)]
    with recorder:
        for i, x in enumerate(syncs.StepWindow(xs, recorder, first=2, count=3)):
            x.sum().item()  # a read at every step
            if i % 2:
                x.tolist()  # a read at odd steps
    assert {c["step"] for c in recorder.calls} == {2, 3, 4}  # steps 0, 1 (warmup) and 5 (after) are not audited
    sites = syncs.summarize(recorder.calls, 3)
    assert [(s["what"], s["calls"], s["every_step"]) for s in sites] == [("Tensor.item", 3, True),
                                                                         ("Tensor.tolist", 1, False)]
    assert sites[0]["where"] == "tests/test_syncs_benchmark.py"
    assert sites[0]["code"] == "x.sum().item()  # a read at every step"
    assert torch.Tensor.item is torch._C.TensorBase.item and "item" not in torch.Tensor.__dict__  # unpatched


def test_window_passes_on_or_overrides_finite_checked():
    class Source(list):
        finite_checked = True
    r = syncs.SyncRecorder(emulate=True)
    assert syncs.StepWindow(Source(), r, 0, 1).finite_checked is True
    assert syncs.StepWindow(Source(), r, 0, 1, finite_checked=False).finite_checked is False
    assert syncs.StepWindow([], r, 0, 1).finite_checked is False


def test_dry_run_finds_the_batch_check_every_step_and_the_nan_check_periodically(tmp_path, capsys):
    out = tmp_path / "syncs.json"
    assert syncs.main(["--device", "cpu", "--archs", "relu", "--dictionaries", "2", "--dict-size", "32", "--width",
                       "8", "--batch", "16", "--warmup", "1", "--steps", "4", "--nan-check-every", "2",
                       "--finite-checked", "no", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "dry run" in capsys.readouterr().out
    (run,) = res["runs"]
    sites = {(s["where"], s["function"]): s for s in run["sites"]}
    check = sites[("dictionary_learning_aligned/training.py", "_prepare")]
    assert check["calls"] == 4 and check["every_step"] and "isfinite" in check["code"]
    nan = sites[("dictionary_learning_aligned/stacked.py", "check_finite")]
    assert nan["steps_hit"] == 2 and not nan["every_step"]  # steps 1 and 3 of the audited 1..4
    assert run["syncs"] == 6 and run["syncs_per_step"] == 1.5 and run["emulated"]
    assert str(tmp_path) not in out.read_text().replace(str(out), "")  # no machine path in the results


def test_dry_run_of_a_finite_checked_relu_stack_finds_no_per_step_sync():
    r = _small_run("relu", finite_checked=True)
    assert r["finite_checked"] and not [s for s in r["sites"] if s["every_step"]], r["sites"]


def test_dry_run_would_have_found_the_per_step_bias_tensor(monkeypatch):
    from dictionary_learning_aligned.stacked import StackedTrainer

    def old_bias_row(self, t):  # the stacked step's bias corrections before they came from a table
        return torch.tensor([1 - self.beta1 ** t, (1 - self.beta2 ** t) ** 0.5], dtype=torch.float64,
                            device=self.device)
    monkeypatch.setattr(StackedTrainer, "_bias_row", old_bias_row)
    r = _small_run("relu", finite_checked=True)
    (site,) = [s for s in r["sites"] if s["every_step"]]
    assert site["where"] == "tests/test_syncs_benchmark.py" and "torch.tensor" in site["what"]


def _small_run(arch, finite_checked):
    with syncs.tempfile.TemporaryDirectory() as tmp:
        cache = syncs.build_random_cache(syncs.Path(tmp) / "c", 16 * 5, 8)
        return syncs.audit_run(cache, arch, "eager", "cpu", 2, 32, 8, 16, warmup=1, steps=4, nan_check_every=0,
                               finite_checked=finite_checked)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_naming_the_dry_run(capsys):
    with pytest.raises(SystemExit) as e:
        syncs.main(["--device", "cuda"])
    assert e.value.code == 2 and "--device cpu" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--archs", "huge"], ["--modes", "fast"], ["--steps", "0"]])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        syncs.main(["--device", "cpu", *argv])
    assert e.value.code == 2 and "error" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--nan-check-every", "-1"], ["--out", "{tmp}"],
                                  ["--out", "{tmp}/file.json/x.json"]])
def test_bad_device_period_or_out_is_refused_before_the_audit(argv, tmp_path, monkeypatch, capsys):
    """An unknown device type (a traceback), a negative check period (taken as its absolute value), an --out
    that is a folder or lies under a file (the error came after the first run's work) exit 2 with one line."""
    (tmp_path / "file.json").write_text("{}")
    monkeypatch.setattr(syncs, "run", lambda *a, **k: pytest.fail("the audit ran"))
    with pytest.raises(SystemExit) as e:
        syncs.main(["--device", "cpu", *[a.format(tmp=tmp_path) for a in argv]])
    assert e.value.code == 2 and "error" in capsys.readouterr().err
    assert (tmp_path / "file.json").read_text() == "{}"


def test_out_into_a_missing_folder_is_written(tmp_path):
    """--out's folder is made first, as benchmarks.speed does (the run failed after its work: no such folder); an
    existing file is replaced, as by benchmarks.sweep and benchmarks.speed."""
    out = tmp_path / "new" / "deeper" / "syncs.json"
    argv = ["--device", "cpu", "--archs", "relu", "--dictionaries", "1", "--dict-size", "16", "--width", "8",
            "--batch", "8", "--warmup", "1", "--steps", "1", "--out", str(out)]
    assert syncs.main(argv) == 0
    assert len(json.loads(out.read_text())["runs"]) == 1
