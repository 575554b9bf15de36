"""Sweep throughput: ``python -m benchmarks.sweep [--device cuda] [--grids main,wide] [--batches 2048,8192]
[--modes stacked,stacked-compiled] [--no-parity] [--out FILE]`` (also ``python -m benchmarks.speed --sweep``).

Times whole sweeps of same-shape dictionaries on random activations (width 576 = SmolLM2-135M's d_model; 640 for
the ``gemma`` grid; bf16 autocast on a GPU), as dictionary-tokens/s (dictionaries x batch x steps / seconds) and
as a fraction of the measured bf16 matmul peak, counting ``12 * activation_dim * dict_size`` FLOPs per
dictionary-token (dense forward and backward of encoder and decoder):

* ``main``: the reproduction's ``main`` grid, 72 x 4096 (ReLU, TopK, BatchTopK, p-anneal x 3 sparsities x
  standard/aligned x 3 seeds);
* ``wide``: 24 x 16384 (ReLU and TopK x 3 sparsities x standard/aligned x 2 seeds);
* ``one``: a single TopK k 64 dictionary of 4096 (aligned), the single-trainer case;
* ``gemma``: the reproduction's ``gemma`` grid at Gemma-3-270M's width 640, 24 x 4096 (the four architectures at
  their default sparsity x standard/aligned x 3 seeds: four stacks of 6);
* ``ablations``: the stacks of the reproduction's ``ablations`` parts at width 576, 12 x 16384 (ReLU and TopK at
  their default sparsity, TopK k 64, x standard/aligned x 3 seeds: two stacks of 6). Unlike ``wide:topk``, whose
  stacks mix k 32, 64 and 128, every TopK dictionary keeps 64 features per token;
* ``sizes``: the widest dictionaries of the reproduction's ``sizes`` experiment, 8 x 65536 (ReLU and TopK at their
  default sparsity x standard/aligned x 2 seeds: two stacks of 4, the fewest that give a cross-seed MCS per
  method), to tell whether such a stack trains 48,828 steps within one device session;
* ``GRID:ARCH`` (e.g. ``main:topk``): one architecture's part of a grid; ``GRID:ARCH:MODE`` (e.g.
  ``main:topk:standard``, ``main:topk:project``): only its standard or aligned dictionaries.

Steady state (``--dead FRACTION``): the random activations of the first steps leave no feature dead, so the
auxiliary-k loss of TopK/BatchTopK, which a real run computes once any feature may be dead (10M tokens), is not
timed by default. With ``--dead FRACTION``, one dictionary in six (as 3 of 18 in the faithful TopK run) gets that
fraction of its features dead before timing (counters at the dead threshold, encoder bias -100 so they stay dead),
and the steps start past every ``threshold_start_step`` (the inference-threshold EMA runs too). A fraction up to
``k_aux / dict_size`` (288 / 4096 = 0.07 at width 576) times the stacked engine's dead-set path, a larger one its
top-k path; ``--dead 0`` only starts past the thresholds.

Each grid is timed by ``--modes``: ``stacked`` (:mod:`dictionary_learning_aligned.stacked`, what ``trainSAE`` runs),
``stacked-compiled`` (the same with ``torch.compile``), ``stacked-graphs``
(``StackedTrainer(compile="reduce-overhead")``: the compiled code replayed as CUDA graphs; on a CPU it compiles
without graphs), ``loop`` (each trainer's own ``update``, one after the other: ``trainSAE(stack=False)``), and
``dictionary_learning`` (PyPI dictionary-learning 0.1.0's trainers in its ``trainSAE`` loop on the same batches,
when installed). Also the peak GPU memory of each, optimizer state included, and ``cudagraph_skips``: how often
Inductor declined CUDA graphs for a compiled function during the point (on a GPU, 0 for ``stacked-graphs`` means
all of its compiled code was graphed; on a CPU it always declines).

Parity (on by default; ``--no-parity`` skips it): after the timed steps, every mode but ``stacked`` (the reference)
and ``dictionary_learning`` (its own initialisation) is compared with an eager ``stacked`` run of the same grid on
the same batches and step numbers: ``parity_w_dec_max_abs`` (largest absolute difference of any decoder entry; the
columns have unit norm) and ``parity_loss_max_rel`` (largest relative difference of a dictionary's training loss,
evaluated in float32 by its own trainer at the final weights on the first batch). Speed targets live here, not in
tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from dictionary_learning_aligned.io import atomic_path

from . import prepare_out

ACTIVATION_DIM = 576
MODES = ("stacked", "stacked-compiled", "stacked-graphs", "loop", "dictionary_learning")
#: ``StackedTrainer(compile=...)`` of each stacked mode
STACKED_COMPILE = {"stacked": False, "stacked-compiled": True, "stacked-graphs": "reduce-overhead"}
#: grid name: (architectures, dict_size, seeds, activation_dim, sparsities: "all" of the registry's or "default")
GRIDS = {"main": (("relu", "topk", "batchtopk", "panneal"), 4096, 3, ACTIVATION_DIM, "all"),
         "wide": (("relu", "topk"), 16384, 2, ACTIVATION_DIM, "all"),
         "one": (("topk",), 4096, 1, ACTIVATION_DIM, "one"),
         "gemma": (("relu", "topk", "batchtopk", "panneal"), 4096, 3, 640, "default"),
         "ablations": (("relu", "topk"), 16384, 3, ACTIVATION_DIM, "default"),
         "sizes": (("relu", "topk"), 65536, 2, ACTIVATION_DIM, "default")}
#: with ``--dead``: every this-many-th dictionary of a grid gets dead features
DEAD_EVERY = 6
DEAD_BIAS = -100.0


def grid(name: str, steps: int) -> list[dict]:
    """Trainer configs of a benchmark grid (see the module docstring), schedules from the registry."""
    from dictionary_learning_aligned import registry

    base, _, rest = name.partition(":")
    only, _, mode_only = rest.partition(":")
    archs, size, seeds, width, which = GRIDS[base]
    archs = (only,) if only else archs
    out = []
    for arch_name in archs:
        arch = registry.get(arch_name)
        values = {"one": (64,), "default": (arch.default_sparsity,)}.get(which, arch.sparsity_values)
        modes = ("project",) if base == "one" else (None, "project")
        if mode_only:
            modes = (None if mode_only == "standard" else mode_only,)
        for value in values:
            for mode in modes:
                for seed in range(seeds):
                    cfg = dict(trainer=arch.trainer_for(mode), steps=steps, activation_dim=width,
                               dict_size=size, layer=12, lm_name="benchmark", seed=seed, **arch.schedule(steps))
                    cfg[arch.sparsity_param] = value
                    if mode:
                        cfg["alignment"] = mode
                    out.append(cfg)
    return out


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _build(cfgs, device):
    trainers = []
    for c in cfgs:
        c = dict(c)
        trainers.append(c.pop("trainer")(device=device, **c))
    return trainers


@torch.no_grad()
def mark_dead(trainers: list, fraction: float, every: int = DEAD_EVERY) -> int:
    """Make ``round(fraction * dict_size)`` features (the first ones) of every ``every``-th trainer dead: their
    dead-feature counters at the trainer's ``dead_feature_threshold`` (tokens) and their encoder bias at
    ``DEAD_BIAS``, so that they stay dead. Works on this library's trainers and dictionary_learning's.

    Returns:
        the number of trainers changed.

    Raises:
        ValueError: a fraction outside [0, 1]; a trainer without dead-feature counters or encoder bias.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"the dead fraction must be in [0, 1], got {fraction}")
    changed = 0
    for j, tr in enumerate(trainers):
        m = round(fraction * tr.ae.dict_size)
        if j % every or m == 0:
            continue
        counters = getattr(tr, "tokens_since_fired", getattr(tr, "num_tokens_since_fired", None))
        bias = getattr(tr.ae, "b_enc", None)
        bias = bias if bias is not None else getattr(getattr(tr.ae, "encoder", None), "bias", None)
        if counters is None or bias is None:
            raise ValueError(f"{type(tr).__name__}: no dead-feature counters or encoder bias to mark dead")
        counters[:m] = getattr(tr, "dead_feature_threshold", 10_000_000)
        bias[:m] = DEAD_BIAS
        changed += 1
    return changed


def _steppers(mode: str, cfgs: list, device: str, dead: Optional[float] = None):
    """``(step, current)`` for one mode: ``step(i, x)`` advances every dictionary of the grid by one step (with
    ``dead``: :func:`mark_dead` first); ``current(steps_done)`` returns this library's trainers (in the order of
    ``cfgs``) holding the weights reached, or None for ``dictionary_learning``."""
    if mode == "dictionary_learning":
        return _dictionary_learning_stepper(cfgs, device, dead), lambda steps_done: None
    trainers = _build(cfgs, device)
    if dead is not None:
        mark_dead(trainers, dead)
    if mode == "loop":
        def step(i, x):
            for tr in trainers:
                tr.update(i, x)
        return step, lambda steps_done: trainers
    from dictionary_learning_aligned.stacked import StackedTrainer, plan_stacks

    groups, alone = plan_stacks(trainers)
    if alone:
        raise ValueError(f"trainers {alone} of the grid cannot be stacked")
    stacks = [StackedTrainer([trainers[i] for i in g], indices=g, nan_check_every=1000,
                             compile=STACKED_COMPILE[mode]) for g in groups]

    def step(i, x):
        for st in stacks:
            st.update(i, x)

    def current(steps_done):
        for st in stacks:
            st.sync_to_trainers(steps_done)
        return trainers
    return step, current


def _dictionary_learning_stepper(cfgs: list, device: str, dead: Optional[float] = None):
    """dictionary_learning 0.1.0's trainers for the same grid (aligned configs are skipped: it has none; the
    standard ones are timed twice so that the dictionary count matches)."""
    from benchmarks.common import DL_ARCHS, dictionary_learning_trainers

    lib, _ = dictionary_learning_trainers()
    if lib is None:
        raise RuntimeError("dictionary-learning 0.1.0 is not installed")
    from dictionary_learning_aligned import registry

    trainers = []
    for c in cfgs:
        arch = registry.for_trainer(c["trainer"])
        name, extra = DL_ARCHS[arch.name]
        kw = {k: v for k, v in c.items() if k in ("steps", "activation_dim", "dict_size", "layer", "lm_name", "seed",
                                                   "warmup_steps", "k", "l1_penalty")}
        trainers.append(getattr(lib, name)(device=device, **{**extra, **kw}))
    if dead is not None:
        mark_dead(trainers, dead)

    def step(i, x):
        for tr in trainers:
            tr.update(i, x)
    return step


def _batches(batch: int, width: int, device: str) -> list:
    """The 4 random batches ``[batch, width]`` (seed 0) that every point cycles through."""
    gen = torch.Generator(device).manual_seed(0)
    return [torch.randn(batch, width, device=device, generator=gen) for _ in range(4)]


def _autocast(device: str):
    return (torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda"
            else torch.autocast("cpu", enabled=False))


def _run_steps(step, xs: list, first: int, count: int) -> None:
    for i in range(first, first + count):
        step(i, xs[i % len(xs)])


@torch.no_grad()
def _final_state(trainers: list, x: torch.Tensor, step: int) -> tuple[list, list]:
    """``(W_dec of each trainer (cloned), its training loss on x at step, float32, no autocast)``."""
    w = [tr.ae.W_dec.detach().float().clone() for tr in trainers]
    return w, [float(tr.loss(x, step)) for tr in trainers]


def parity(state: tuple, reference: tuple) -> dict:
    """``parity_w_dec_max_abs`` (the largest absolute difference of any decoder entry) and ``parity_loss_max_rel``
    (the largest relative difference of a dictionary's loss) between two :func:`_final_state` results."""
    (w, loss), (w_ref, loss_ref) = state, reference
    return {"parity_w_dec_max_abs": max(float((a - b).abs().max()) for a, b in zip(w, w_ref)),
            "parity_loss_max_rel": max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(loss, loss_ref))}


def time_grid(name: str, mode: str, batch: int, device: str, steps: int, warmup: int,
              profile: Optional[str] = None, dead: Optional[float] = None, check_parity: bool = True) -> dict:
    """Dictionary-tokens/s, TFLOP/s and peak memory of one grid in one mode (random activations, seed 0), and the
    parity with an eager ``stacked`` run (see the module docstring; not for ``stacked`` itself and
    ``dictionary_learning``, or with ``check_parity`` False). With ``profile`` (a file path), the timed steps run
    again under ``torch.profiler`` and the operators' table (sorted by device time, 40 rows) is written there; the
    timing and the parity come from the unprofiled steps. With ``dead`` (a fraction), the steady state of a real
    run: dead features (:func:`mark_dead`) and steps numbered from past every ``threshold_start_step``.

    Each point compiles afresh: ``torch._dynamo.reset()`` first drops what earlier points compiled (their compiled
    functions share code objects with this point's, and Dynamo allows ``recompile_limit`` (8) versions of a code
    object per process; past it the point ran eagerly, e.g. ``one`` after ``main:topk``)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    cfgs = grid(name, steps=10_000)
    width, size = cfgs[0]["activation_dim"], cfgs[0]["dict_size"]
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    skips = counters["inductor"]["cudagraph_skips"]
    step, current = _steppers(mode, cfgs, device, dead)
    first = 0 if dead is None else 1 + max(c.get("threshold_start_step", 0) for c in cfgs)
    xs = _batches(batch, width, device)
    with _autocast(device):
        _run_steps(step, xs, first, warmup)
        _sync(device)
        t = time.perf_counter()
        _run_steps(step, xs, first + warmup, steps)
        _sync(device)
        dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    end = first + warmup + steps
    trainers = current(end)
    state = _final_state(trainers, xs[0], end) if trainers is not None else None
    if profile:
        with _autocast(device):
            _profile(step, xs, end, steps, device, profile)
    dict_tok_s = len(cfgs) * batch * steps / dt
    row = {"grid": name, "mode": mode, "batch": batch, "dead": dead, "dictionaries": len(cfgs), "dict_size": size,
           "activation_dim": width, "step_ms": 1000 * dt / steps, "dict_tokens_per_s": dict_tok_s,
           "tflops": 12 * width * size * dict_tok_s / 1e12, "peak_mem_gib": peak,
           "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips}
    if check_parity and state is not None and mode != "stacked":
        del step, current, trainers
        ref_step, ref_current = _steppers("stacked", cfgs, device, dead)
        with _autocast(device):
            _run_steps(ref_step, xs, first, warmup + steps)
        row.update(parity(state, _final_state(ref_current(end), xs[0], end)))
    return row


def _profile(step, xs, first: int, steps: int, device: str, path: str) -> None:
    """Run ``steps`` more steps under ``torch.profiler`` and write its operator table (by device time) to
    ``path``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=acts) as prof:
        _run_steps(step, xs, first, steps)
        _sync(device)
    key = "self_cuda_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"
    Path(path).write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))


def run(grids, modes, batches, device, steps, warmup, out=None, command="", profile_dir=None, dead=None,
        check_parity=True) -> dict:
    """Time every (grid, batch, mode); a failing point is recorded with its error and the rest still runs. With
    ``out`` the JSON is rewritten after every row; with ``profile_dir`` each point's profiler table is written
    there as ``GRID_MODE_BATCH.txt``; ``dead``, ``check_parity``: see :func:`time_grid`."""
    from benchmarks.common import matmul_peak

    res = {"command": command, "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda"
           else platform.processor() or "cpu", "torch": torch.__version__, "activation_dim": ACTIVATION_DIM,
           "matmul_peak_tflops": matmul_peak(device), "rows": [], "complete": False}
    for name in grids:
        for batch in batches:
            for mode in modes:
                try:
                    prof = (str(Path(profile_dir) / f"{name.replace(':', '-')}_{mode}_{batch}.txt")
                            if profile_dir else None)
                    row = time_grid(name, mode, batch, device, steps, warmup, prof, dead, check_parity)
                    row["frac_of_peak"] = row["tflops"] / res["matmul_peak_tflops"]
                except Exception as e:  # a failing point is recorded, the rest still runs
                    row = {"grid": name, "mode": mode, "batch": batch, "dead": dead,
                           "error": f"{type(e).__name__}: {e}"}
                res["rows"].append(row)
                print(format_row(row), flush=True)
                gc.collect()
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
                _write(res, out)
    res["complete"] = True
    _write(res, out)
    return res


def _write(res, out):
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(res, indent=1))


def format_row(r: dict) -> str:
    """One line of the printed table."""
    head = f"{r['grid']:>5} batch {r['batch']:>5} {r['mode']:>20}"
    if r.get("dead") is not None:
        head += f" dead {r['dead']:g}"
    if "error" in r:
        return f"{head}  failed: {r['error'][:200]}"
    mem = "" if r["peak_mem_gib"] is None else f" {r['peak_mem_gib']:6.1f} GiB"
    tail = f" {r['cudagraph_skips']} graph skips" if r.get("cudagraph_skips") else ""
    if "parity_w_dec_max_abs" in r:
        tail += f" | vs eager stacked: W_dec {r['parity_w_dec_max_abs']:.2e}, loss {r['parity_loss_max_rel']:.2e} rel"
    return (f"{head} {r['dictionaries']:>3} x {r['dict_size']:<6} {r['step_ms']:8.2f} ms/step "
            f"{r['dict_tokens_per_s'] / 1e6:9.2f}M dict-tok/s {r['tflops']:7.1f} TFLOP/s "
            f"{100 * r.get('frac_of_peak', 0):5.1f}% peak{mem}{tail}")


def main(argv=None) -> int:
    """Command line (see the module docstring); returns 0, or 1 when every point failed."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--grids", default="main,wide,one", help=f"comma-separated: {', '.join(GRIDS)} (or GRID:ARCH, "
                    "GRID:ARCH:MODE)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of {MODES}")
    ap.add_argument("--batches", default="2048,8192", help="comma-separated batch sizes (activations per step)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per point")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--out", help="write the results as JSON to this file")
    ap.add_argument("--profile", metavar="DIR", help="also profile each point's timed steps (torch.profiler) and write "
                    "its operator table, by device time, to DIR/GRID_MODE_BATCH.txt")
    ap.add_argument("--dead", type=float, metavar="FRACTION",
                    help="time the steady state of a real run: one dictionary in six gets this fraction of its "
                    "features dead (TopK/BatchTopK then compute the auxiliary-k loss: up to k_aux/dict_size its "
                    "dead-set path, above its top-k path) and steps start past the inference-threshold start; "
                    "0: only the latter")
    ap.add_argument("--no-parity", action="store_true", help="skip the comparison of each mode's final weights and "
                    "losses with an eager stacked run of the same steps (one more run per point)")
    args = ap.parse_args(argv)
    grids, modes = args.grids.split(","), args.modes.split(",")
    bad = [g for g in grids if g.partition(":")[0] not in GRIDS] + [m for m in modes if m not in MODES]
    if bad or args.steps < 1 or args.warmup < 0:
        ap.error(f"unknown grid/mode {bad}" if bad else "--steps must be >= 1 and --warmup >= 0")
    if args.dead is not None and not 0 <= args.dead <= 1:
        ap.error(f"--dead must be a fraction in [0, 1], got {args.dead}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if args.out:
        prepare_out(ap, args.out)
    if args.profile:
        if Path(args.profile).exists() and not Path(args.profile).is_dir():
            ap.error(f"--profile must be a folder; {args.profile} is a file")
        try:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            ap.error(f"--profile {args.profile}: cannot create the folder ({e})")
    res = run(grids, modes, batches, args.device, args.steps, args.warmup, args.out,
              command="python -m benchmarks.sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
              profile_dir=args.profile, dead=args.dead, check_parity=not args.no_parity)
    return 0 if any("error" not in r for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
