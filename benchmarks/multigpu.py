"""Multi-GPU check: compare runs of ``python -m dictionary_learning_aligned.train`` made with one process and with
several (``torchrun --nproc_per_node N``), and draw the figure.

``python -m benchmarks.multigpu --one DIR --many DIR [--sweep-one DIR --sweep-many DIR] --out DIR``

* ``--one`` / ``--many``: the same trainers (same seed, cache, steps and global batch) trained by one process and
  data-parallel (``--placement ddp``) by N processes. Reported: the largest absolute and relative difference of
  the logged losses at the same steps, the final losses, tokens/s of each run and the scaling efficiency
  ``tokens/s(N) / (N x tokens/s(1))``.
* ``--sweep-one`` / ``--sweep-many``: a sweep of several trainers run by one process and spread over N
  (``--placement spread``): wall time, dictionary-tokens/s and efficiency.

Writes ``OUT/multigpu.json`` and ``OUT/multigpu.pdf`` (+ ``.png``) and prints a summary. Timings come from each
run's ``run.json`` (``train_seconds``: from a common start after the processes meet to the last one's end; model
loading and cache reading before that are excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

LOSS_KEYS = ("loss", "mse_loss")


def load_run(path) -> dict:
    """``run.json`` of a training run with ``"logs"``: the ``log.json`` list of each ``trainer_{i}``.

    Raises:
        FileNotFoundError: no ``run.json`` (or a trainer's ``log.json``) in ``path``.
        ValueError: a ``run.json`` without timing (written before timing was recorded).
    """
    path = Path(path)
    if not (path / "run.json").is_file():
        raise FileNotFoundError(f"{path}: no run.json (not an output folder of dictionary_learning_aligned.train)")
    run = json.loads((path / "run.json").read_text())
    if not isinstance(run, dict) or not isinstance(run.get("trainers"), list) or not run["trainers"] \
            or not isinstance(run.get("world_size"), int) or run["world_size"] < 1:
        raise ValueError(f"{path}/run.json is not the run.json of a dictionary_learning_aligned.train run")
    if "train_seconds" not in run:
        raise ValueError(f"{path}/run.json has no train_seconds: re-run with this version of the trainer")
    for k in ("train_seconds", "dictionary_tokens_per_s"):
        v = run.get(k)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{path}/run.json: {k} must be a positive number, got {v!r}")
    run["logs"] = []
    for i in range(len(run["trainers"])):
        f = path / f"trainer_{i}" / "log.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing")
        log = json.loads(f.read_text())
        if not isinstance(log, list) or not log or not all(isinstance(e, dict) and "step" in e and "loss" in e
                                                            for e in log):
            raise ValueError(f"{f}: not a non-empty list of logged steps with a loss")
        run["logs"].append(log)
    run["path"] = str(path)
    return run


def _throughput(one: dict, many: dict) -> dict:
    n = many["world_size"]
    t1, tn = one["dictionary_tokens_per_s"], many["dictionary_tokens_per_s"]
    return {"world_size": n, "seconds_one": one["train_seconds"], "seconds_many": many["train_seconds"],
            "tokens_per_s_one": t1, "tokens_per_s_many": tn, "speedup": tn / t1, "efficiency": tn / (n * t1)}


def compare_ddp(one: dict, many: dict) -> dict:
    """Loss agreement and scaling of a data-parallel run ``many`` against the one-process run ``one``.

    Returns:
        ``{"trainers": [{"trainer", "steps_compared", "max_abs_diff", "max_rel_diff", "final_loss_one",
        "final_loss_many"}], **throughput}``, differences over the keys ``loss`` and ``mse_loss``.

    Raises:
        ValueError: the runs differ in trainers, steps or global batch size.
    """
    if one["trainers"] != many["trainers"] or one.get("steps") != many.get("steps") \
            or one.get("cache") != many.get("cache"):
        raise ValueError(f"{one['path']} and {many['path']} are not the same training (trainers, steps or cache)")
    if one["world_size"] != 1:
        raise ValueError(f"{one['path']} ran on {one['world_size']} processes; --one/--sweep-one take a "
                         f"one-process run")
    rows = []
    for i, (la, lb) in enumerate(zip(one["logs"], many["logs"])):
        by_step = {e["step"]: e for e in lb}
        common = [(a, by_step[a["step"]]) for a in la if a["step"] in by_step]
        if not common:
            raise ValueError(f"trainer {i}: no logged step in common")
        diffs = [(abs(a[k] - b[k]), abs(a[k] - b[k]) / max(abs(a[k]), 1e-12))
                 for a, b in common for k in LOSS_KEYS if k in a and k in b]
        # a non-finite loss (a diverged run) is a difference, not something max() may skip
        worst = [(math.inf, math.inf) if not all(map(math.isfinite, d)) else d for d in diffs]
        rows.append({"trainer": one["trainers"][i].get("trainer"), "steps_compared": len(common),
                     "max_abs_diff": max(d[0] for d in worst), "max_rel_diff": max(d[1] for d in worst),
                     "final_loss_one": la[-1]["loss"], "final_loss_many": lb[-1]["loss"]})
    return {"trainers": rows, **_throughput(one, many)}


def plot(out: Path, ddp: list[tuple[str, dict, dict, dict]], sweep: dict | None) -> Path:
    """Figure: loss curves of each one/N-process pair, their relative difference, and the scaling bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (label, one, many, cmp_) in enumerate(ddp):
        c = colors[j % len(colors)]
        for run, ls, who in ((one, "-", "1 GPU"), (many, "--", f"{many['world_size']} GPUs")):
            log = run["logs"][0]
            axes[0].plot([e["step"] for e in log], [e["loss"] for e in log], ls, color=c, label=f"{label}, {who}")
        by_step = {e["step"]: e["loss"] for e in many["logs"][0]}
        pts = [(e["step"], abs(e["loss"] - by_step[e["step"]]) / max(abs(e["loss"]), 1e-12)) for e in one["logs"][0]
               if e["step"] in by_step]
        axes[1].semilogy([p[0] for p in pts], [max(p[1], 1e-12) for p in pts], color=c, label=label)
    axes[0].set(xlabel="step", ylabel="training loss", title="one process vs data-parallel")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="step", ylabel="|loss(1) - loss(N)| / loss(1)", title="relative loss difference")
    axes[1].legend(fontsize=7)
    bars = [(label, c["efficiency"]) for label, _, _, c in ddp] + ([("sweep (spread)", sweep["efficiency"])]
                                                                    if sweep else [])
    axes[2].bar(range(len(bars)), [b[1] for b in bars], color=colors[: len(bars)])
    axes[2].axhline(1.0, color="k", lw=0.8, ls=":")
    axes[2].set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7, rotation=15)
    axes[2].set(ylabel="tokens/s(N) / (N x tokens/s(1))", title="scaling efficiency", ylim=(0, 1.15))
    for x, (_, v) in enumerate(bars):
        axes[2].text(x, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    pdf = out / "multigpu.pdf"
    fig.savefig(pdf)
    fig.savefig(out / "multigpu.png", dpi=120)
    plt.close(fig)
    return pdf


def main(argv=None) -> int:
    """Entry point; returns the exit status (2 with a one-line error for bad input)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.multigpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs="+", default=[], help="one-process run folder(s)")
    ap.add_argument("--many", nargs="+", default=[], help="data-parallel run folder(s), in the order of --one")
    ap.add_argument("--labels", default=None, help="comma list naming each --one/--many pair")
    ap.add_argument("--sweep-one", default=None)
    ap.add_argument("--sweep-many", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    args = ap.parse_args(argv)
    try:
        if len(args.one) != len(args.many) or not (args.one or args.sweep_one):
            raise ValueError("give as many --many folders as --one folders (and at least one pair or a sweep)")
        if (args.sweep_one is None) != (args.sweep_many is None):
            raise ValueError("--sweep-one and --sweep-many go together")
        labels = args.labels.split(",") if args.labels else [Path(p).name for p in args.one]
        if len(labels) != len(args.one):
            raise ValueError(f"--labels has {len(labels)} names for {len(args.one)} pairs")
        if len(set(labels)) != len(labels):
            raise ValueError(f"the pairs need distinct names (give --labels), got {labels}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is not a folder")
        if (out / "multigpu.json").exists() and not args.overwrite:
            raise ValueError(f"{out / 'multigpu.json'} exists: pass --overwrite to replace it")
        ddp = []
        for label, a, b in zip(labels, args.one, args.many):
            one, many = load_run(a), load_run(b)
            ddp.append((label, one, many, compare_ddp(one, many)))
        sweep = None
        if args.sweep_one:
            s1, sn = load_run(args.sweep_one), load_run(args.sweep_many)
            if s1["trainers"] != sn["trainers"] or s1.get("steps") != sn.get("steps") or s1["world_size"] != 1:
                raise ValueError(f"{args.sweep_one} (one process) and {args.sweep_many} are not the same sweep")
            sweep = {"trainers": len(s1["trainers"]), "placement_many": sn["placement"], **_throughput(s1, sn)}
    except (ValueError, OSError, json.JSONDecodeError) as e:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {"command": "python -m benchmarks.multigpu " + " ".join(argv if argv is not None else sys.argv[1:]),
               "ddp": {label: {"one": one["path"], "many": many["path"], "command_one": one["command"],
                               "command_many": many["command"], **c} for label, one, many, c in ddp},
               "sweep": sweep}
    pdf = plot(out, ddp, sweep)
    (out / "multigpu.json").write_text(json.dumps(summary, indent=2))
    for label, _, _, c in ddp:
        for r in c["trainers"]:
            print(f"{label}: {r['trainer']}: {r['steps_compared']} logged steps, max |dloss| {r['max_abs_diff']:.3g} "
                  f"(relative {r['max_rel_diff']:.3g}); final loss {r['final_loss_one']:.5g} vs "
                  f"{r['final_loss_many']:.5g}")
        print(f"{label}: {c['tokens_per_s_one']:,.0f} tokens/s on 1 vs {c['tokens_per_s_many']:,.0f} on "
              f"{c['world_size']}: speed-up {c['speedup']:.2f}, efficiency {c['efficiency']:.2f}")
    if sweep:
        print(f"sweep of {sweep['trainers']} trainers: {sweep['seconds_one']:.1f} s on 1 vs {sweep['seconds_many']:.1f}"
              f" s on {sweep['world_size']} ({sweep['placement_many']}): speed-up {sweep['speedup']:.2f}, "
              f"efficiency {sweep['efficiency']:.2f}")
    print(f"wrote {pdf} and {out / 'multigpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
