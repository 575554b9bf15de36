"""Host synchronisations of training steps: ``python -m benchmarks.syncs [--device cuda] [--archs relu,topk,batchtopk]
[--modes eager,compiled] [--steps 30] [--out FILE]``.

A synchronising call (``.item()``, ``bool(tensor)``, ``.tolist()``, a copy from pageable host memory, ...) makes
the CPU wait for the GPU, so the next step's kernels are launched only after this step's have run: the GPU then
idles for the CPU's launch time at every step. This audit trains, for each architecture and mode, a small stack
(``--dictionaries`` dictionaries: standard and aligned ``project``, seeds 0, 1, ...) with ``trainSAE`` over a
preloaded ``ActivationCache`` of random activations built in a temporary folder (``cache.build_cache``), as
``reproduce`` trains from its cache (normalized activations, bf16 autocast on a GPU). After ``--warmup`` steps
(compilation happens there) it turns on ``torch.cuda.set_sync_debug_mode("warn")`` for ``--steps`` steps and
records every synchronising call with the innermost frame of this repository on its stack (the cache's iteration
included), then reports the calls per step and each site: how many calls, in how many of the steps (all of them:
a per-step sync; a few: a periodic one, e.g. the stacks' non-finite check every ``--nan-check-every`` steps).

On a CPU (``--device cpu``) nothing synchronises; the audit then runs as a dry run of its own plumbing on small
sizes: Python-level reads of tensor values (``item``, ``tolist``, ``bool``/``float``/``int`` of a tensor,
``numpy``, ``cpu``, ``nonzero``) and tensors built from host values onto an explicit device (``torch.tensor(...,
device=...)``) are reported as if they synchronised. It over-reports (reads of host tensors, such as the schedule
tables, do not synchronise on a GPU) and misses copies (``.to(device)``); its numbers are not a GPU's.

``--finite-checked`` decides whether the data source says its batches are finite (``trainSAE`` then skips the
per-batch NaN/inf check): ``cache`` (default) as the ``ActivationCache`` says, ``yes`` or ``no`` to force it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import linecache
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from dictionary_learning_aligned.io import atomic_path

from . import prepare_out
from .common import device_kind

REPO = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
#: the warning ``torch.cuda.set_sync_debug_mode("warn")`` raises at each synchronising call
SYNC_MESSAGE = "called a synchronizing CUDA operation"
MODES = {"eager": False, "compiled": True, "graphs": "reduce-overhead"}
#: defaults per device kind: a GPU's audit sizes, and a CPU dry run's small ones
DEFAULTS = {"cuda": dict(dictionaries=3, dict_size=4096, width=640, batch=2048, warmup=5, steps=30,
                         modes="eager,compiled"),
            "cpu": dict(dictionaries=3, dict_size=256, width=64, batch=256, warmup=2, steps=6, modes="eager")}


def _site(frames: list) -> tuple[str, int, str, str]:
    """``(path relative to the repository, line, function, via)`` of the innermost frame of this repository
    (this module excluded) in ``frames`` (outermost first); ``via`` is the innermost frame outside the repository
    (e.g. a torch file, named from its package folder), or "" when the repository's frame is the innermost."""
    via = ""
    for f in reversed(frames):
        if f.filename == warnings.__file__ or f.filename.startswith("<"):
            continue
        path = Path(f.filename).resolve()
        if path == THIS:
            continue
        if REPO in path.parents and ".venv" not in path.relative_to(REPO).parts:
            return str(path.relative_to(REPO)), f.lineno, f.name, via
        via = via or f"{_short(path)}:{f.lineno} {f.name}"
    return "?", 0, "?", via


def _short(path: Path) -> str:
    """``path`` from its package folder (after the last ``site-packages``), else its last two parts."""
    parts = path.parts
    cut = max((i for i, p in enumerate(parts) if p in ("site-packages", "dist-packages")), default=len(parts) - 3)
    return "/".join(parts[cut + 1:])


class SyncRecorder:
    """Records synchronising calls between :meth:`start` and :meth:`stop`, each with its site (see :func:`_site`)
    and the step set by the caller (``recorder.step``).

    Args:
        emulate: False: CUDA's sync debug mode reports the calls; True: the CPU dry run's stand-ins (see the module
            docstring) report them.

    Use it as a context manager around the training (it installs the warning hook); ``calls`` is a list of
    ``{"step", "where", "line", "function", "code", "via", "what"}``.
    """

    #: Tensor methods whose Python-level calls the dry run reports (each reads values back to the host)
    READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu", "nonzero")

    def __init__(self, emulate: bool):
        self.emulate, self.calls, self.step, self.active = emulate, [], None, False
        self._saved: dict = {}
        self._catch = None

    def __enter__(self):
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("always", message=".*" + SYNC_MESSAGE)
        shown = warnings.showwarning

        def hook(message, category, filename, lineno, file=None, line=None):
            if self.active and SYNC_MESSAGE in str(message):
                self._record(str(message))
            elif SYNC_MESSAGE not in str(message):
                shown(message, category, filename, lineno, file, line)
        warnings.showwarning = hook
        return self

    def __exit__(self, *exc):
        self.stop()
        self._catch.__exit__(*exc)

    def start(self) -> None:
        if self.active:
            return
        self.active = True
        if self.emulate:
            self._patch()
        else:
            torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if not self.active:
            return
        if self.emulate:
            self._unpatch()
        else:
            torch.cuda.set_sync_debug_mode(0)
        self.active = False

    def _record(self, message: str) -> None:
        where, lineno, func, via = _site(traceback.extract_stack()[:-1])
        code = linecache.getline(str(REPO / where), lineno).strip() if where != "?" else ""
        what = message.split("(emulated: ", 1)[1].split(")")[0] if "(emulated: " in message else ""
        self.calls.append({"step": self.step, "where": where, "line": lineno, "function": func, "code": code,
                           "via": via, "what": what})

    def _patch(self) -> None:
        def reporting(name, fn):
            def wrapper(*args, **kwargs):
                warnings.warn(f"{SYNC_MESSAGE} (emulated: {name})", UserWarning, stacklevel=2)
                return fn(*args, **kwargs)
            return wrapper
        for name in self.READS:
            self._saved[(torch.Tensor, name)] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, reporting(f"Tensor.{name}", getattr(torch.Tensor, name)))
        make = torch.tensor

        def tensor(*args, **kwargs):
            if kwargs.get("device") is not None:
                warnings.warn(f"{SYNC_MESSAGE} (emulated: torch.tensor(..., device=...))", UserWarning, stacklevel=2)
            return make(*args, **kwargs)
        self._saved[(torch, "tensor")] = make
        torch.tensor = tensor

    def _unpatch(self) -> None:
        for (owner, name), fn in self._saved.items():
            if fn is None:
                delattr(owner, name)
            else:
                setattr(owner, name, fn)
        self._saved = {}


class StepWindow:
    """Iterates over ``source``, numbering its batches (``recorder.step``), and calls ``recorder.start()`` before
    batch ``first`` is read and ``recorder.stop()`` once ``count`` batches from there have been handed out (when
    the next is asked for, i.e. after their training steps). Says ``finite_checked`` as ``source`` does, unless
    ``finite_checked`` is given."""

    def __init__(self, source: Iterable, recorder: SyncRecorder, first: int, count: int,
                 finite_checked: Optional[bool] = None):
        self.source, self.recorder, self.first, self.count = source, recorder, first, count
        self.finite_checked = (bool(getattr(source, "finite_checked", False)) if finite_checked is None
                               else finite_checked)

    def __iter__(self):
        batches = iter(self.source)
        for i in range(self.first + self.count):
            if i == self.first:
                self.recorder.start()
            self.recorder.step = i
            batch = next(batches, None)
            if batch is None:
                break
            yield batch
        self.recorder.stop()


def build_random_cache(folder, tokens: int, width: int, seed: int = 0) -> Path:
    """A cache folder (``cache.build_cache``, float16) of ``tokens`` random activations ``[tokens, width]``."""
    from dictionary_learning_aligned.cache import build_cache

    gen = torch.Generator().manual_seed(seed)
    chunk = 1 << 15
    batches = (torch.randn(min(chunk, tokens - s), width, generator=gen) for s in range(0, tokens, chunk))
    return build_cache(batches, folder, tokens, {"model": "random", "layer": 0})


def configs(arch_name: str, n: int, dict_size: int, width: int, steps: int) -> list[dict]:
    """``n`` trainer configs of one architecture (registry defaults): standard seed 0, then aligned ``project``
    seeds 0, 1, ..."""
    from dictionary_learning_aligned import registry

    arch = registry.get(arch_name)
    out = []
    for j in range(n):
        mode = None if j == 0 else "project"
        cfg = dict(trainer=arch.trainer_for(mode), steps=steps, activation_dim=width, dict_size=dict_size, layer=0,
                   lm_name="random", seed=max(0, j - 1), **arch.schedule(steps))
        cfg[arch.sparsity_param] = arch.default_sparsity
        if mode:
            cfg["alignment"] = mode
        out.append(cfg)
    return out


def audit_run(cache_dir, arch: str, mode: str, device: str, dictionaries: int, dict_size: int, width: int,
              batch: int, warmup: int, steps: int, nan_check_every: int = 10,
              finite_checked: Optional[bool] = None) -> dict:
    """Train one stack for ``warmup + steps`` steps and record the synchronising calls of the last ``steps``.

    Returns:
        ``{"arch", "mode", "dictionaries", "dict_size", "activation_dim", "batch", "steps", "finite_checked",
        "emulated", "syncs", "syncs_per_step", "seconds" (the whole run: cache preload, compilation, the audited
        steps with their warnings), "sites": [...]}``, each site ``{"where", "line", "function", "code",
        "via", "what", "calls", "steps_hit", "every_step"}``, most calls first.
    """
    from dictionary_learning_aligned.cache import ActivationCache
    from dictionary_learning_aligned.training import trainSAE

    torch._dynamo.reset()  # each run compiles afresh (see benchmarks.sweep.time_grid)
    t0 = time.perf_counter()
    cuda = torch.device(device).type == "cuda"
    data = ActivationCache(cache_dir, batch_size=batch, device=device, preload=True, drop_last=True, shuffle=True)
    recorder = SyncRecorder(emulate=not cuda)
    window = StepWindow(data, recorder, warmup, steps, finite_checked)
    total = warmup + steps
    with recorder:
        trainSAE(window, configs(arch, dictionaries, dict_size, width, total), total, device=device,
                 autocast_dtype=torch.bfloat16 if cuda else torch.float32, normalize_activations=True,
                 norm_factor_batches=1, nan_check_every=nan_check_every, compile_stacks=MODES[mode])
    return {"arch": arch, "mode": mode, "dictionaries": dictionaries, "dict_size": dict_size, "activation_dim": width,
            "batch": batch, "steps": steps, "finite_checked": window.finite_checked, "emulated": not cuda,
            "syncs": len(recorder.calls), "syncs_per_step": len(recorder.calls) / steps,
            "seconds": time.perf_counter() - t0, "sites": summarize(recorder.calls, steps)}


def summarize(calls: list[dict], steps: int) -> list[dict]:
    """One entry per site (file, line, what) of ``calls``: its calls, the number of distinct steps it hit and
    whether that is every step; most calls first."""
    keys = ("where", "line", "function", "code", "via", "what")
    count, hit = Counter(), {}
    for c in calls:
        k = tuple(c[n] for n in keys)
        count[k] += 1
        hit.setdefault(k, set()).add(c["step"])
    return [{**dict(zip(keys, k)), "calls": n, "steps_hit": len(hit[k]), "every_step": len(hit[k]) >= steps}
            for k, n in count.most_common()]


def format_run(r: dict) -> str:
    """The printed lines of one run."""
    head = (f"{r['arch']} {r['mode']}: {r['dictionaries']} x {r['dict_size']} (width {r['activation_dim']}, batch "
            f"{r['batch']}), {r['steps']} steps{', emulated on CPU' if r['emulated'] else ''}, finite_checked="
            f"{r['finite_checked']}: {r['syncs']} synchronising calls, {r['syncs_per_step']:.2f} per step, "
            f"{r['seconds']:.0f} s")
    lines = [head]
    for s in r["sites"]:
        what = f" [{s['what']}]" if s["what"] else ""
        via = f" via {s['via']}" if s["via"] else ""
        lines.append(f"  {s['calls']:>4} calls in {s['steps_hit']:>3}/{r['steps']} steps  {s['where']}:{s['line']} "
                     f"{s['function']}{what}: {s['code'][:90]}{via}")
    return "\n".join(lines)


def run(archs: list[str], modes: list[str], device: str, dictionaries: int, dict_size: int, width: int, batch: int,
        warmup: int, steps: int, nan_check_every: int = 10, finite_checked: Optional[bool] = None,
        out: Optional[str] = None, command: str = "", say: Callable[[str], None] = print) -> dict:
    """Build the random cache in a temporary folder and audit every (architecture, mode); returns the results
    (written as JSON to ``out`` after each run when given)."""
    res = {"command": command, "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda"
           else "cpu (dry run: emulated synchronisations)", "torch": torch.__version__,
           "warmup": warmup, "nan_check_every": nan_check_every, "runs": []}
    with tempfile.TemporaryDirectory(prefix="syncs_cache_") as tmp:
        cache = build_random_cache(Path(tmp) / "cache", batch * (warmup + steps), width)
        for arch in archs:
            for mode in modes:
                r = audit_run(cache, arch, mode, device, dictionaries, dict_size, width, batch, warmup, steps,
                              nan_check_every, finite_checked)
                res["runs"].append(r)
                say(format_run(r))
                if out:
                    with atomic_path(out) as t:
                        t.write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    """Command line (see the module docstring); returns 0."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.syncs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (the audit) or cpu (a dry run of the plumbing with emulated synchronisations)")
    ap.add_argument("--archs", default="relu,topk,batchtopk", help="comma-separated registered architectures")
    ap.add_argument("--modes", help=f"comma-separated of {', '.join(MODES)} (default: eager,compiled on a GPU, eager "
                    "on a CPU)")
    for name, help_ in (("dictionaries", "dictionaries per stack"), ("dict-size", "features per dictionary"),
                        ("width", "activation width"), ("batch", "activations per step"),
                        ("warmup", "steps before the audit (compilation happens here)"), ("steps", "audited steps")):
        ap.add_argument(f"--{name}", type=int, help=f"{help_} (default: {DEFAULTS['cuda'][name.replace('-', '_')]} "
                        f"on a GPU, {DEFAULTS['cpu'][name.replace('-', '_')]} on a CPU)")
    ap.add_argument("--nan-check-every", type=int, default=10, help="the stacks' non-finite check period (a "
                    "periodic synchronisation; trainSAE's default is 100)")
    ap.add_argument("--finite-checked", choices=("cache", "yes", "no"), default="cache",
                    help="whether the data source says its batches are finite (cache: as the ActivationCache says)")
    ap.add_argument("--out", help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    kind = device_kind(ap, args.device, "runs a dry run of the audit's plumbing (emulated synchronisations, not "
                                        "a GPU's)")
    d = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in DEFAULTS[kind].items()}
    archs, modes = args.archs.split(","), d["modes"].split(",")
    from dictionary_learning_aligned import registry

    bad = [a for a in archs if a not in registry.names()] + [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown architecture or mode: {', '.join(bad)}")
    if min(d["dictionaries"], d["dict_size"], d["width"], d["batch"], d["steps"]) < 1 or d["warmup"] < 1:
        ap.error("sizes, --steps and --warmup must be >= 1")
    if args.nan_check_every < 0:
        ap.error(f"--nan-check-every must be >= 0 (0: no periodic check), got {args.nan_check_every}")
    if args.out:
        prepare_out(ap, args.out)
    if kind == "cpu":
        print("cpu: a dry run of the audit's plumbing; the synchronisations are emulated (see --help)")
    run(archs, modes, args.device, d["dictionaries"], d["dict_size"], d["width"], d["batch"], d["warmup"],
        d["steps"], args.nan_check_every, {"cache": None, "yes": True, "no": False}[args.finite_checked], args.out,
        command="python -m benchmarks.syncs " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
