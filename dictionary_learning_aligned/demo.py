"""The main job: harvest activations, train a standard and an aligned ReLU SAE side by side, evaluate both on
held-out text, and report the difference (table, ``results.json``, alignment-score histograms as PDF)."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from simple_parsing.helpers import field as help_field

from . import pipeline, registry
from .dtypes import as_dtype, check_device
from .models import GGUF_FORMATS, MODEL_NAME_HELP


@dataclass
class DemoConfig:
    """Settings of the demo (each is a command-line flag of ``python -m dictionary_learning_aligned demo``)."""

    model: str = help_field("smollm2-135m-instruct", help=f"language model: {MODEL_NAME_HELP}")
    """language model: an offline alias (models.OFFLINE_NAMES), a Hugging Face name, or a local folder (the
    --help text is models.MODEL_NAME_HELP, shared with train's --model)"""
    layer: Optional[int] = None
    """decoder block whose residual-stream output is read (0-based; default: 8 for gemma-3-270m, the gemma
    experiment's layer at the paper's relative depth, else 12)"""
    corpus: Optional[str] = None
    """text: a local txt/jsonl(.gz) file or folder, or a Hugging Face dataset name; omit for the bundled corpus"""
    tokens: int = 150_000
    """training tokens (steps = tokens // batch_size); the default keeps the demo under 10 minutes on 2 CPU
    cores with SmolLM2 (about 18 with --model gemma-3-270m), enough to see the two SAEs differ, not to train
    them well (use 10M+ on a GPU)"""
    dict_size: int = 4096
    """features per dictionary"""
    arch: str = "relu"
    """architecture: relu (L1), topk, batchtopk or panneal (Lp, p annealed from 1 to 0.2), the extensions (not in
    the paper) jumprelu and matryoshka, any other registered name, or a comma-separated list of them (all trained on the same harvested batches)"""
    l1_penalty: float = 0.04
    """relu: L1 coefficient; panneal: initial sparsity coefficient; the same for both SAEs (activations are
    normalized to unit mean squared norm)"""
    k: int = 64
    """topk / batchtopk / matryoshka: active features per token; jumprelu: the target L0"""
    lr: Optional[float] = None
    """peak Adam learning rate (default: the trainer's: 1e-3 for relu/panneal, 2e-4/sqrt(dict_size/2^14) for topk)"""
    alignment: str = "project"
    """alignment mode of the aligned SAE (project or rescale)"""
    seeds: int = 1
    """seeds per SAE type; with 2 or more, cross-seed stability (MCS) is reported"""
    batch_size: int = 1024
    """activations per training step"""
    ctx_len: int = 128
    """tokens per context"""
    buffer_ctxs: int = 1000
    """contexts held in the shuffling buffer (a run of fewer tokens harvests just its own, once)"""
    refresh_batch_size: int = 32
    """contexts per language-model forward pass"""
    eval_batches: int = 20
    """held-out activation batches (of batch_size) for reconstruction metrics"""
    ce_batches: int = 4
    """held-out batches of ce_batch_size contexts for CE losses"""
    ce_batch_size: int = 8
    """contexts per CE batch"""
    seed: int = 0
    """first seed (seeds are seed, seed+1, ...; standard and aligned SAEs of one seed share the initial decoder)"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """device for the model and the SAEs (default: cuda if a GPU is available, else cpu)"""
    model_dtype: str = "float32"
    """dtype of the language model"""
    autocast: str = "float32"
    """autocast dtype for SAE training (bfloat16 on GPU is faster)"""
    max_norm_multiple: Optional[float] = 10.0
    """drop tokens whose activation norm exceeds this multiple of the median norm of their harvest batch
    (massive-activation outliers that otherwise dominate MSE and FVE); 0 or negative: keep every token"""
    out: str = "demo_out"
    """output folder (must not exist or be empty, unless --overwrite)"""
    overwrite: bool = False
    """replace the output folder of an earlier run"""
    save_every: int = 0
    """write a checkpoint (usable dictionary + full training state) every this many steps; 0: none"""
    resume: bool = False
    """continue the run in --out from its latest checkpoint (same settings), instead of starting a new one"""
    log_steps: int = 50
    """log losses and alignment summary every this many steps"""
    verbose: bool = False
    """print the training log of every logged step and third-party messages (default: one line per phase and
    one progress bar per long phase)"""

    @property
    def layer_read(self) -> int:
        """The decoder block the demo reads: ``layer``, else the model's default (:func:`.pipeline.default_layer`)."""
        return self.layer if self.layer is not None else pipeline.default_layer(self.model)


#: allowed values of the enum-like flags
CHOICES = {"alignment": ["project", "rescale"], "model_dtype": ["float32", "bfloat16", "float16"],
           "autocast": ["float32", "bfloat16", "float16"]}


def trainer_configs(cfg: DemoConfig, activation_dim: int, steps: int) -> list[tuple[str, dict]]:
    """``(group name, trainer config)`` of every SAE of the demo: for each architecture and seed a standard and an
    aligned SAE, identical but for the alignment, with schedules scaled to ``steps``.

    Raises:
        ValueError: unknown architecture.
    """
    archs = _archs(cfg.arch)
    out = []
    for arch in archs:
        prefix = f"{arch} " if len(archs) > 1 else ""
        standard, aligned = registry.get(arch).trainer, registry.get(arch).aligned_trainer
        common = _arch_settings(cfg, arch, activation_dim, steps)
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            out.append((prefix + "standard", dict(trainer=standard, seed=seed, **common)))
            out.append((prefix + f"aligned ({cfg.alignment})",
                        dict(trainer=aligned, alignment=cfg.alignment, seed=seed, **common)))
    return out


def _archs(spec: str) -> list[str]:
    """The architecture names of a comma-separated ``--arch`` value (registered names, :mod:`.registry`).

    Raises:
        ValueError: an empty list or a name that is not registered (the message lists the registered ones).
    """
    archs = [a.strip() for a in str(spec).split(",") if a.strip()]
    known = registry.names()
    bad = [a for a in archs if a not in known]
    if bad or not archs:
        raise ValueError(f"unknown arch {spec!r}; choose one or more (comma-separated) of {tuple(known)}")
    return archs


def _counts_features(arch: str) -> bool:
    """Whether the architecture's sparsity parameter counts active features per token (``k``, ``target_l0``:
    set by ``--k``) rather than weighting a penalty (``l1_penalty``, ``initial_sparsity_penalty``: ``--l1-penalty``)."""
    return all(isinstance(v, int) for v in registry.get(arch).sparsity_values)


def _arch_settings(cfg: DemoConfig, arch: str, activation_dim: int, steps: int) -> dict:
    """Trainer arguments shared by the standard and aligned SAE of ``arch``: shape, model, the registered
    schedule scaled to ``steps`` (``Architecture.schedule``), the sparsity value (``--k`` or ``--l1-penalty``,
    :func:`_counts_features`) and ``--lr`` if given."""
    spec = registry.get(arch)
    layer = cfg.layer_read
    common = dict(steps=steps, activation_dim=activation_dim, dict_size=cfg.dict_size, layer=layer,
                  lm_name=cfg.model, submodule_name=f"layers.{layer}", **spec.schedule(steps))
    if cfg.lr is not None:
        common["lr"] = cfg.lr
    common[spec.sparsity_param] = cfg.k if _counts_features(arch) else cfg.l1_penalty
    return common


def validate_config(cfg: DemoConfig) -> None:
    """Check every setting that can be checked without loading anything.

    Raises:
        ValueError: the first bad setting, named.
    """
    for name in ("tokens", "dict_size", "batch_size", "buffer_ctxs", "refresh_batch_size", "seeds", "eval_batches",
                 "ce_batch_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.ctx_len < 2:
        raise ValueError(f"ctx_len must be >= 2 (BOS plus at least one token), got {cfg.ctx_len}")
    if cfg.ce_batches < 0:
        raise ValueError(f"ce_batches must be >= 0, got {cfg.ce_batches}")
    if cfg.tokens // cfg.batch_size < 2:
        raise ValueError(f"tokens={cfg.tokens} gives {cfg.tokens // cfg.batch_size} steps of batch_size="
                         f"{cfg.batch_size}; need at least 2")
    if cfg.alignment not in ("project", "rescale"):
        raise ValueError(f"alignment must be 'project' or 'rescale', got {cfg.alignment!r}")
    if any(_counts_features(a) for a in _archs(cfg.arch)) and not 1 <= cfg.k <= cfg.dict_size:
        raise ValueError(f"k must be in [1, dict_size={cfg.dict_size}], got {cfg.k}")
    if not cfg.l1_penalty >= 0 or cfg.l1_penalty == float("inf"):
        raise ValueError(f"l1_penalty must be a finite number >= 0, got {cfg.l1_penalty}")
    if cfg.lr is not None and not 0 < cfg.lr < float("inf"):
        raise ValueError(f"lr must be a positive number, got {cfg.lr}")
    if cfg.max_norm_multiple is not None and 0 < cfg.max_norm_multiple <= 1:
        raise ValueError(f"max_norm_multiple must be > 1 (or <= 0 to keep every token), got {cfg.max_norm_multiple}")
    if not str(cfg.model).strip():
        raise ValueError("model name is empty")
    if cfg.corpus is not None and not str(cfg.corpus).strip():
        raise ValueError("corpus is empty; omit --corpus for the bundled corpus")
    for name in ("model_dtype", "autocast"):
        as_dtype(getattr(cfg, name), name)
    check_device(cfg.device, "device")


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo end to end and write its outputs into ``cfg.out``.

    Outputs: ``dictionaries/trainer_{i}`` (for each seed a standard then an aligned SAE) with weights and
    config, ``results.json`` (settings, metrics of every SAE, their mean/std per type, cross-seed stability with
    per-feature max cosines when ``seeds > 1``, training logs, timings, versions), ``alignment_hist.pdf`` and
    ``.png`` (alignment-score histograms, first seed of each type), and the printed table.

    Returns:
        the results dict written to ``results.json``.

    Raises:
        ValueError: bad settings (non-positive sizes, too few tokens for one step, unknown dtype/alignment),
            a layer out of range, or an empty corpus.
        FileExistsError: ``cfg.out`` exists and is not empty (without ``overwrite``).
        FileNotFoundError: the offline model file is missing (the message says how to install it).
    """
    from . import console
    from .io import check_output_dir, prepare_output_dir, write_json

    if cfg.layer is None:
        cfg = dataclasses.replace(cfg, layer=cfg.layer_read)
    validate_config(cfg)
    if cfg.verbose:
        console.configure(verbose=True)
    steps = cfg.tokens // cfg.batch_size
    if steps < 2:
        raise ValueError(f"tokens={cfg.tokens} gives {steps} steps of batch_size={cfg.batch_size}; need at least 2")
    if cfg.resume:
        check_resume(cfg)  # same settings and text as the run recorded, and not finished; nothing is changed
    else:
        check_output_dir(cfg.out, cfg.overwrite)  # fail before the slow steps; nothing is changed yet
    pipeline.check_corpus(cfg.corpus, seed=cfg.seed)  # an unreadable corpus or an empty split fails here
    timings = {}
    t0 = time.time()
    _say(_loading_line(cfg))
    model = pipeline.load_model(cfg.model, cfg.layer, cfg.device, as_dtype(cfg.model_dtype, "model_dtype"))
    timings["load_model_s"] = time.time() - t0
    out = Path(cfg.out) if cfg.resume else prepare_output_dir(cfg.out, cfg.overwrite)
    if not cfg.resume:
        write_json(out / FINGERPRINT_FILE, run_fingerprint(cfg))
    harvest = pipeline.Harvest(model, corpus=cfg.corpus, batch_size=cfg.batch_size, ctx_len=cfg.ctx_len,
                               refresh_batch_size=cfg.refresh_batch_size, device=cfg.device,
                               max_norm_multiple=cfg.max_norm_multiple, seed=cfg.seed)
    # a run shorter than the buffer harvests just its own steps x batch size activations (one fill)
    train_buffer = pipeline.activation_buffer(harvest, "train", cfg.buffer_ctxs, verbose=console.is_verbose(),
                                              max_rows=steps * cfg.batch_size)
    runs = trainer_configs(cfg, model.d_model, steps)
    names = [g if cfg.seeds == 1 else f"{g} seed {c['seed']}" for g, c in runs]
    _say(f"[2/3] harvesting activations of layer {cfg.layer} and training {len(runs)} SAEs for {steps} steps "
         f"of {cfg.batch_size} tokens" + ("" if console.is_verbose() else " (--verbose prints the training log)"))
    t0 = time.time()
    trainers = _train(cfg, out, runs, steps, train_buffer)
    timings["harvest_and_train_s"] = time.time() - t0
    steps_done = trainers[0].steps_done

    _say(f"[3/3] evaluating on held-out text ({cfg.eval_batches * cfg.batch_size} tokens, CE loss on "
         f"{cfg.ce_batches * cfg.ce_batch_size} contexts)")
    t0 = time.time()
    metrics, groups, stab = _evaluate_dictionaries(cfg, out, runs, names, harvest)
    timings["evaluate_s"] = time.time() - t0

    results = {
        "command": " ".join([Path(sys.executable).name, "-m", "dictionary_learning_aligned"] + sys.argv[1:]),
        "settings": asdict(cfg),
        "steps": steps,
        "steps_done": steps_done,
        "train_tokens": steps_done * cfg.batch_size,
        "norm_factor": trainers[0].norm_factor,
        "metrics": metrics,
        "groups": groups,
        "summary": summarize_groups(metrics, groups),
        "stability": stab,
        "training_logs": {n: t.log for n, t in zip(names, trainers)},
        "timings_s": timings,
        "versions": _versions(),
        "note": _model_note(cfg.model),
    }
    _write_outputs(out, results, metrics, groups)
    return results


def _train(cfg, out: Path, runs: list, steps: int, train_buffer) -> list:
    """Fill the training buffer (one progress bar for the first fill) and train every SAE of ``runs`` with
    ``trainSAE`` into ``out/dictionaries``; returns the trainers."""
    from . import console
    from .training import trainSAE

    if not cfg.resume:  # the first fill is the long wait before training starts: one bar for it, then the training bar
        train_buffer.verbose = True
        train_buffer.refresh()  # what the first batch would do; the batches are the same
        train_buffer.verbose = console.is_verbose()
    trainers = trainSAE(train_buffer, [c for _, c in runs], steps,
                        save_dir=out / "dictionaries", log_steps=cfg.log_steps, normalize_activations=True,
                        device=cfg.device, autocast_dtype=as_dtype(cfg.autocast, "autocast"),
                        verbose=console.is_verbose(),
                        resume=cfg.resume,
                        save_steps=list(range(cfg.save_every - 1, steps, cfg.save_every)) if cfg.save_every > 0 else None,
                        run_cfg={"buffer": train_buffer.config, "model": cfg.model, "corpus": cfg.corpus or "bundled"})
    return trainers


def _evaluate_dictionaries(cfg, out: Path, runs: list, names: list, harvest) -> tuple[dict, dict, dict]:
    """Evaluate every trained dictionary of the demo on held-out text (:func:`.pipeline.heldout_data`,
    :func:`.pipeline.evaluate_dictionaries`): ``(metrics {name: evaluate() dict}, groups {group: [names]},
    stability {group: stability() dict}, empty with one seed)``."""
    from .pipeline import evaluate_dictionaries, heldout_data
    from .stability import stability

    heldout = heldout_data(harvest, cfg.eval_batches, cfg.ce_batches, cfg.ce_batch_size)
    folders = [out / "dictionaries" / f"trainer_{i}" for i in range(len(names))]
    loaded, evaluated = evaluate_dictionaries(folders, heldout, harvest.model, cfg.device, keep=cfg.seeds > 1)
    metrics, dictionaries = dict(zip(names, evaluated)), dict(zip(names, loaded))
    groups = {}
    for (g, _), name in zip(runs, names):
        groups.setdefault(g, []).append(name)
    stab = {}
    if cfg.seeds > 1:
        for g, members in groups.items():
            st = stability([dictionaries[m] for m in members])
            st["per_feature_max_cos"] = [[round(v, 4) for v in p] for p in st["per_feature_max_cos"]]
            stab[g] = st
    return metrics, groups, stab


def _write_outputs(out: Path, results: dict, metrics: dict, groups: dict) -> None:
    """Write ``results.json``, ``results.md`` and the alignment-score histograms, and print the table."""
    from .io import write_json

    write_json(out / "results.json", results)
    (out / "results.md").write_text(format_markdown(results))
    plot_alignment_histograms({g: metrics[m[0]] for g, m in groups.items()}, out / "alignment_hist.pdf")
    print(format_table(results))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'alignment_hist.pdf'} (and .png) and "
          f"dictionaries in {out / 'dictionaries'}")


def _loading_line(cfg: DemoConfig) -> str:
    """The demo's first progress line: the model and device, and for an offline model its file format and the
    dtype its weights are de-quantised to (``--model-dtype``), e.g. ``[1/3] loading gemma-3-270m on cpu (Q4_K_M
    GGUF, de-quantised to float32)``."""
    line = f"[1/3] loading {cfg.model} on {cfg.device}"
    fmt = GGUF_FORMATS.get(cfg.model.lower())
    if fmt is None:
        return line
    dtype = str(as_dtype(cfg.model_dtype, "model_dtype")).removeprefix("torch.")
    return f"{line} ({fmt}, de-quantised to {dtype})"


def _say(message: str) -> None:
    """One line of progress on stdout, flushed at once (a phase of the demo starts)."""
    print(message, flush=True)


FINGERPRINT_FILE = "run_fingerprint.json"
#: settings that may differ on --resume (where outputs go, logging, checkpoint cadence, evaluation size)
RESUME_MAY_DIFFER = ("out", "overwrite", "resume", "device", "log_steps", "save_every", "eval_batches", "ce_batches",
                     "ce_batch_size", "verbose")
FINGERPRINT_DOCS = 64


def run_fingerprint(cfg: DemoConfig) -> dict:
    """What a run's training depends on: the settings (but :data:`RESUME_MAY_DIFFER`) and a SHA-256 of the first
    :data:`FINGERPRINT_DOCS` training documents in stream order (they make the first batches), with their count.

    Raises:
        ValueError: the corpus cannot be read (as :func:`.data.iter_texts`).
    """
    import hashlib
    import itertools

    from .data import iter_texts

    h, n = hashlib.sha256(), 0
    for text in itertools.islice(iter_texts(cfg.corpus, split="train", seed=cfg.seed), FINGERPRINT_DOCS):
        h.update(text.encode("utf-8") + b"\0")
        n += 1
    settings = {k: v for k, v in asdict(cfg).items() if k not in RESUME_MAY_DIFFER}
    if "layer" in settings:  # the layer read: --layer, else the model's default
        settings["layer"] = cfg.layer_read
    return {"settings": settings, "corpus_sha256": h.hexdigest(), "corpus_docs_hashed": n}


def check_resume(cfg: DemoConfig) -> None:
    """Refuse ``--resume`` unless ``cfg.out`` holds an unfinished run with the same settings and training text.

    Raises:
        ValueError: no run there, a finished run (``results.json`` or final dictionaries written: resuming would
            retrain it and replace them), a run without a recorded fingerprint, other settings (named), or another
            corpus or corpus order.
    """
    out = Path(cfg.out)
    if not (out / "dictionaries").is_dir():
        raise ValueError(f"--resume: {cfg.out} holds no run to continue (no dictionaries/ folder)")
    finished = (out / "results.json").is_file() or any((out / "dictionaries").glob("trainer_*/ae.safetensors"))
    if finished:
        raise ValueError(f"--resume: the run in {cfg.out} is finished (its dictionaries or results.json are "
                         f"written); resuming would retrain and replace them. Start a new run in another folder")
    try:
        saved = json.loads((out / FINGERPRINT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--resume: {out / FINGERPRINT_FILE} is missing or unreadable ({e}); cannot check that the "
                         f"settings and text match the run") from None
    mine = run_fingerprint(cfg)
    diff = sorted(k for k in set(mine["settings"]) | set(saved.get("settings", {}))
                  if mine["settings"].get(k) != saved.get("settings", {}).get(k))
    if diff:
        raise ValueError(f"--resume: settings differ from the run's: " + ", ".join(
            f"{k} (run {saved['settings'].get(k)!r}, given {mine['settings'].get(k)!r})" for k in diff))
    if mine["corpus_sha256"] != saved.get("corpus_sha256"):
        raise ValueError(f"--resume: the training text differs from the run's (fingerprint of its first "
                         f"{FINGERPRINT_DOCS} documents); resume with the same --corpus and --seed")


def _model_note(model: str) -> str:
    if model.lower() == "smollm2-135m-instruct":
        return ("offline default: SmolLM2-135M-Instruct (de-quantized Q4_1 GGUF) on the bundled Wikipedia + "
                "Gutenberg corpus, not the paper's Pythia-160M / Gemma-2-2B on the Pile")
    if model.lower() == "gemma-3-270m":
        return ("offline second family: Gemma-3-270M base (de-quantized Q4_K_M GGUF, Gemma Terms of Use) on the "
                "bundled Wikipedia + Gutenberg corpus, not the paper's Gemma-2-2B on the Pile")
    return ""


def _versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "nnsight", "dictionary_learning_aligned"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


ROWS = [
    ("L0", lambda m: m["l0"], "{:.1f}"),
    ("frac. variance explained", lambda m: m["frac_variance_explained"], "{:.4f}"),
    ("MSE (per element)", lambda m: m["mse"], "{:.5f}"),
    ("cosine similarity", lambda m: m["cossim"], "{:.4f}"),
    ("CE loss clean", lambda m: m.get("loss_original"), "{:.4f}"),
    ("CE loss with SAE", lambda m: m.get("loss_reconstructed"), "{:.4f}"),
    ("CE loss zero-ablated", lambda m: m.get("loss_zero"), "{:.4f}"),
    ("CE loss recovered", lambda m: m.get("frac_recovered"), "{:.4f}"),
    ("alive fraction", lambda m: m["frac_alive"], "{:.4f}"),
    ("alignment mean", lambda m: m["alignment"]["mean"], "{:.4f}"),
    ("alignment |a-1|<0.1", lambda m: m["alignment"]["frac_within_0.1_of_1"], "{:.4f}"),
    ("alignment a<0.5", lambda m: m["alignment"]["frac_below_0.5"], "{:.4f}"),
    ("bimodality coefficient", lambda m: m["alignment"]["bimodality_coefficient"], "{:.3f}"),
]


def summarize_groups(metrics: dict, groups: dict) -> dict:
    """Mean and (with several seeds) standard deviation over seeds of every table metric, per group."""
    import statistics

    out = {}
    for g, members in groups.items():
        out[g] = {}
        for label, get, _ in ROWS:
            vals = [get(metrics[m]) for m in members]
            if any(v is None for v in vals):
                out[g][label] = None
                continue
            out[g][label] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "n": len(vals)}
    return out


def format_table(results: dict) -> str:
    """Side-by-side text table of the demo's metrics per SAE type (mean ± std over seeds when there are
    several; missing values shown as ``n/a``), with the cross-seed stability when measured."""
    summary, groups, stab = results["summary"], list(results["summary"]), results.get("stability") or {}
    n_seeds = len(next(iter(results["groups"].values())))
    w = max(len(r[0]) for r in ROWS) + 2
    cols = [max(len(g), 18 if n_seeds > 1 else 10) + 2 for g in groups]
    lines = ["metric".ljust(w) + "".join(g.rjust(c) for g, c in zip(groups, cols))]
    lines.append("-" * len(lines[0]))
    rows = [(label, fmt) for label, _, fmt in ROWS]
    for label, fmt in rows:
        cells = []
        for g, c in zip(groups, cols):
            v = summary[g][label]
            txt = "n/a" if v is None else fmt.format(v["mean"]) + (f" ± {fmt.format(v['std'])}" if n_seeds > 1 else "")
            cells.append(txt.rjust(c))
        lines.append(label.ljust(w) + "".join(cells))
    if stab:
        for label, key in (("MCS across seeds", "mcs"), ("frac. max cos > 0.7", "frac_above_0.7"),
                           ("frac. max cos > 0.9", "frac_above_0.9"), ("Hungarian mean cos", "hungarian_mean_cos")):
            cells = [("n/a" if stab[g][key] is None else f"{stab[g][key]:.4f}").rjust(c) for g, c in zip(groups, cols)]
            lines.append(label.ljust(w) + "".join(cells))
    if any(not registry.get(a).fixed_l0 for a in _archs(results["settings"]["arch"])):
        lines.append("note: at the same sparsity penalty the SAEs reach different L0; compare them at matched L0 "
                     "(a penalty sweep, or --arch topk)")
    first = results["metrics"][results["groups"][groups[0]][0]]
    lines.append(f"({n_seeds} seed(s) per type; {first['n_tokens']} held-out tokens for reconstruction and alive "
                 f"fraction, {first.get('ce_n_tokens', 0)} predicted tokens for CE losses; "
                 f"{results['train_tokens']} training tokens)")
    return "\n".join(lines)


MD_ROWS = ["L0", "frac. variance explained", "CE loss recovered", "alive fraction", "alignment mean",
           "alignment a<0.5"]


def format_markdown(results: dict) -> str:
    """One markdown table row per SAE type: mean ± std over seeds of the key metrics, and the cross-seed MCS."""
    stab = results.get("stability") or {}
    head = ["SAE"] + MD_ROWS + (["MCS", "max cos > 0.7"] if stab else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, row in results["summary"].items():
        cells = [g]
        for label in MD_ROWS:
            v = row[label]
            cells.append("n/a" if v is None else f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if v.get("n", 2) > 1
                                                                      else ""))
        if stab:
            cells += [f"{stab[g]['mcs']:.3f}", f"{stab[g]['frac_above_0.7']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_alignment_histograms(metrics: dict, path) -> None:
    """Write one alignment-score histogram per dictionary, side by side, to ``path`` (PDF) and a PNG preview."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(metrics)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, m) in zip(axes.flat, metrics.items()):
        s = m["alignment"]
        edges = s["hist_edges"]
        ax.stairs(s["hist_counts"], edges, fill=True, alpha=0.8)
        ax.set_title(name)
        ax.set_xlabel(r"alignment score $a_i = \langle e_i, d_i\rangle$")
        ax.set_ylabel("features")
        ax.set_yscale("symlog", linthresh=1)
        extra = f"outside [{edges[0]:g}, {edges[-1]:g}]: {s['underflow'] + s['overflow']}"
        ax.text(0.02, 0.97, f"mean {s['mean']:.3f}\n|a-1|<0.1: {s['frac_within_0.1_of_1']:.2f}\n{extra}",
                transform=ax.transAxes, va="top", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    fig.savefig(Path(path).with_suffix(".png"), dpi=110)
    plt.close(fig)
