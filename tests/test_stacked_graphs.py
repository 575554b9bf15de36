"""The stacked engine's CUDA-graph mode (``StackedTrainer(compile="reduce-overhead")``) and the sweep benchmark's
``stacked-graphs`` mode with its parity check against the eager stack.

On a CPU, Inductor compiles "reduce-overhead" without graphs, so these tests check the plumbing: the mode is
accepted and a bad one refused by name, each update starts a cudagraph-tree step, the tensors that live across steps
are marked static, and the result equals the default compiled path. The graphs themselves (no Inductor skip, same
weights as the default compiled path) are checked by the CUDA-only test.
"""

import copy

import pytest
import torch

from benchmarks import sweep
from dictionary_learning_aligned import stacked
from dictionary_learning_aligned import trainers as T
from dictionary_learning_aligned.stacked import StackedTrainer

D, F, B = 16, 48, 64


def _trainers(arch="relu", device="cpu", steps=20):
    common = dict(steps=steps, activation_dim=D, dict_size=F, layer=0, lm_name="test", device=device,
                  warmup_steps=2, decay_start=15)
    if arch == "relu":
        return [T.StandardTrainer(seed=0, l1_penalty=0.05, sparsity_warmup_steps=3, **common),
                T.AlignedStandardTrainer(seed=1, l1_penalty=0.02, alignment="project", sparsity_warmup_steps=3,
                                         **common)]
    # TopK: the inference-threshold EMA from step 3, features dead after 2 batches (the auxiliary-k loss)
    kw = dict(threshold_start_step=3, dead_feature_threshold=2 * B, **common)
    return [T.TopKTrainer(seed=0, k=6, **kw), T.AlignedTopKTrainer(seed=1, k=4, alignment="project", **kw)]


def _batches(n, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, D, generator=g).to(device) for _ in range(n)]


def _train(trs, batches, compile):
    eng = StackedTrainer(trs, compile=compile)
    for step, x in enumerate(batches):
        eng.update(step, x)
    return eng


def _state(eng):
    return [*eng.params, *eng.exp_avg, *eng.exp_avg_sq, eng.tokens_since_fired]


@pytest.mark.parametrize("compile,mode", [(False, None), (None, None), (True, "default"),
                                          ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")])
def test_compile_accepts_bools_and_torch_compile_modes(compile, mode):
    assert stacked.compile_mode(compile) == mode


@pytest.mark.parametrize("bad", ["fast", "reduce_overhead", "inductor", 3, 0.5])
def test_a_bad_compile_is_refused_naming_the_valid_modes(bad):
    with pytest.raises(ValueError, match="default, reduce-overhead, max-autotune") as e:
        StackedTrainer(_trainers(), compile=bad)
    assert repr(bad) in str(e.value)


def test_graph_mode_starts_a_step_per_update_and_marks_the_persistent_tensors_static(monkeypatch):
    # compilation replaced by the eager functions: what is checked is the engine's own part of the graph mode
    modes = []
    monkeypatch.setattr(StackedTrainer, "_compile", staticmethod(lambda fn, mode: modes.append(mode) or fn))
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    batches = _batches(4)
    graphs = StackedTrainer(_trainers(), compile="reduce-overhead")
    grads = [p.grad for p in graphs.params]  # allocated once, zero, at a fixed address
    assert all(g is not None and not g.any() for g in grads)
    for step, x in enumerate(batches):
        graphs.update(step, x)
        assert all(p.grad is g and not g.any() for p, g in zip(graphs.params, grads))  # zeroed by the step
    assert modes == ["reduce-overhead"] * 2 and len(marks) == 4 and graphs.graphs
    for t in _state(graphs) + grads:
        assert getattr(t, "_dynamo_static_input_type", None) is not None
    default = _train(_trainers(), batches, True)
    assert len(marks) == 4 and not default.graphs  # no marking and no static tensors in the default mode
    assert all(getattr(t, "_dynamo_static_input_type", None) is None for t in _state(default))
    for a, b in zip(_state(graphs), _state(default)):  # the graph mode's bookkeeping changes no number
        assert torch.equal(a, b)


def test_reduce_overhead_trains_as_the_default_compiled_stack():
    # on a CPU both compile the same code (no graphs there): equal, moments, counters and the TopK threshold EMA
    # included, through the auxiliary-k loss (features dead after 2 batches) and the threshold start (step 3)
    batches = _batches(6)
    trs_a, trs_b = _trainers("topk"), _trainers("topk")
    a, b = _train(trs_a, batches, True), _train(trs_b, batches, "reduce-overhead")
    assert b.graphs and not a.graphs and b.rule.aux_on
    for x, y in zip(_state(a) + [a.rule.threshold], _state(b) + [b.rule.threshold]):
        assert torch.equal(x, y)
    b.sync_to_trainers(len(batches))
    assert torch.equal(trs_b[1].ae.W_dec, b.W_dec[1]) and torch.equal(trs_b[1].ae.threshold, b.rule.threshold[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_replay_every_compiled_function_and_match_the_default_compiled_stack():
    from torch._dynamo.utils import counters

    batches = _batches(10, "cuda")  # past the threshold start (3) and the dead threshold (2 batches): every path
    default = _train(_trainers("topk", "cuda"), batches, True)
    skips = counters["inductor"]["cudagraph_skips"]
    trs = _trainers("topk", "cuda")
    graphs = _train(trs, batches, "reduce-overhead")
    assert counters["inductor"]["cudagraph_skips"] == skips, "Inductor declined CUDA graphs (see its warning)"
    for x, y in zip(_state(default), _state(graphs)):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(graphs.rule.threshold, default.rule.threshold, rtol=1e-5, atol=1e-6)
    graphs.sync_to_trainers(len(batches))
    snapshot = copy.deepcopy([tr.ae.state_dict() for tr in trs])
    graphs.update(len(batches), batches[0])  # a further replay leaves the trainers' copies intact
    for tr, sd in zip(trs, snapshot):
        assert all(torch.equal(v, sd[k]) for k, v in tr.ae.state_dict().items())


# ---------------------------------------------------------------------------------------------- the benchmark
@pytest.fixture
def tiny_grid(monkeypatch):
    """``main`` shrunk to ReLU dictionaries of 64 at width 16 (3 sparsities x standard/aligned: 6)."""
    monkeypatch.setitem(sweep.GRIDS, "main", (("relu",), 64, 1, 16, "all"))


def test_benchmark_graph_mode_uses_reduce_overhead_and_reports_parity(tiny_grid, monkeypatch):
    modes = []
    monkeypatch.setattr(StackedTrainer, "_compile", staticmethod(lambda fn, mode: modes.append(mode) or fn))
    row = sweep.time_grid("main", "stacked-graphs", 8, "cpu", steps=2, warmup=1)
    # the timed stack in graph mode, then the eager reference stack
    assert modes == ["reduce-overhead"] * 2 + [None] * 2 and row["dictionaries"] == 6 and row["activation_dim"] == 16
    # eager functions in the graph mode: the same numbers as the eager stack
    assert row["parity_w_dec_max_abs"] == 0 and row["parity_loss_max_rel"] == 0
    assert "vs eager stacked: W_dec 0.00e+00" in sweep.format_row(row)
    loop = sweep.time_grid("main", "loop", 8, "cpu", steps=2, warmup=1)
    assert 0 <= loop["parity_w_dec_max_abs"] < 1e-5 and 0 <= loop["parity_loss_max_rel"] < 1e-4
    ref = sweep.time_grid("main", "stacked", 8, "cpu", steps=2, warmup=1)
    assert "parity_w_dec_max_abs" not in ref  # the reference itself
    quick = sweep.time_grid("main", "loop", 8, "cpu", steps=2, warmup=1, check_parity=False)
    assert "parity_w_dec_max_abs" not in quick


def test_parity_reports_the_largest_differences():
    w = [torch.zeros(2, 3), torch.ones(2, 3)]
    w_ref = [torch.zeros(2, 3), torch.ones(2, 3)]
    w_ref[1][0, 2] = 1.25
    p = sweep.parity((w, [2.0, 4.0]), (w_ref, [2.0, 5.0]))
    assert p == {"parity_w_dec_max_abs": 0.25, "parity_loss_max_rel": 0.2}


def test_no_parity_flag_and_the_gemma_grid(tiny_grid, tmp_path, monkeypatch):
    import benchmarks.speed

    monkeypatch.setattr(benchmarks.speed, "matmul_peak", lambda device: 1.0)  # minutes on a CPU
    out = tmp_path / "s.json"
    assert sweep.main(["--device", "cpu", "--grids", "main", "--modes", "loop", "--batches", "8", "--steps", "1",
                       "--warmup", "0", "--no-parity", "--out", str(out)]) == 0
    assert "parity_w_dec_max_abs" not in out.read_text()
    cfgs = sweep.grid("gemma", 100)  # the reproduction's gemma experiment: four stacks of 6 at width 640
    assert len(cfgs) == 24 and {c["activation_dim"] for c in cfgs} == {640}
    assert len(sweep.grid("gemma:topk", 100)) == 6 and {c["k"] for c in sweep.grid("gemma:topk", 100)} == {64}


def test_reproduce_compile_mode_is_checked_before_anything_loads(tmp_path):
    """``reproduce --compile-mode`` reaches the stacks as the mode string; a mode without --compile or an unknown
    mode is refused by name before the model loads (nothing is written)."""
    from dictionary_learning_aligned import reproduce

    assert reproduce.compile_setting(True, "reduce-overhead") == "reduce-overhead"
    assert reproduce.compile_setting(True, None) is True and reproduce.compile_setting(False, None) is False
    with pytest.raises(ValueError, match="needs --compile"):
        reproduce.compile_setting(False, "reduce-overhead")
    with pytest.raises(ValueError, match="one of default, reduce-overhead"):
        reproduce.compile_setting(True, "fast")
    store = tmp_path / "store"
    with pytest.raises(ValueError, match="one of default"):
        reproduce.run_experiment("main", "smoke", str(store), device="cpu", compile_stacks="fast")
    assert not store.exists()
    assert reproduce.main(["main", "--scale", "smoke", "--results", str(store), "--compile-mode",
                           "reduce-overhead"]) == 2
    assert not store.exists()
