"""Export dictionaries of this library to the formats of the field: saprmarks/dictionary_learning (also read by
SAEBench's own ``load_dictionary_learning_*`` loaders) and SAELens (``SAE.load_from_disk``).

Import needs nothing here: ``Dictionary.from_pretrained`` reads both formats (see :mod:`.checkpoints`).

The aligned encoder (computed from ``V`` and ``W_dec``, or ``W_dec.T`` for ``"tied"``) is written as a plain
``W_enc``, so the other tools need no knowledge of alignment; the alignment mode and where the dictionary came
from are kept as extra configuration keys (``trainer.alignment`` and ``trainer.dictionary_learning_aligned`` in
dictionary_learning's ``config.json``; ``metadata.dictionary_learning_aligned`` in SAELens' ``cfg.json``), so
importing an export gives back the same dictionary, aligned mode included.

Command line::

    python -m dictionary_learning_aligned.interop export --format dictionary_learning|saelens SRC DST [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from .checkpoints import PROVENANCE_KEY, SAELENS_CONFIG_FILE, SAELENS_WEIGHTS_FILE
from .io import atomic_path, prepare_output_dir, write_json

FORMATS = ("dictionary_learning", "saelens")
#: our dictionary class -> SAELens architecture of its inference model
SAELENS_ARCHITECTURES = {"AutoEncoder": "standard", "AutoEncoderTopK": "topk", "BatchTopKSAE": "jumprelu",
                         "MatryoshkaBatchTopKSAE": "jumprelu", "JumpReluAutoEncoder": "jumprelu"}
#: our dictionary classes that dictionary_learning 0.1.0 has under the same name
DL_CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE")
#: classes whose threshold is one learned number (-1 until learned), used at inference
GLOBAL_THRESHOLD = ("BatchTopKSAE", "MatryoshkaBatchTopKSAE")


def export(src, dst, format: str, overwrite: bool = False) -> Path:
    """Export the dictionary in ``src`` to ``dst`` in ``format`` (one of :data:`FORMATS`).

    Args:
        src: a folder (``trainer_i``) or weights file that ``Dictionary.from_pretrained`` reads; its
            ``config.json``, when present, gives ``layer``, ``lm_name``, ``submodule_name`` and the trainer.
        dst: a new (or empty) output folder; an earlier export of this library is replaced only with
            ``overwrite`` (see :func:`.io.prepare_output_dir`: nothing else is ever deleted).
        format: ``"dictionary_learning"`` or ``"saelens"``.

    Returns:
        the output folder.

    Raises:
        ValueError: unknown format; a dictionary the format cannot represent (named); a ``dst`` that may not be
            replaced. CheckpointError (a ValueError): ``src`` is not a readable dictionary. FileExistsError:
            ``dst`` is not empty, without ``overwrite``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {FORMATS}")
    ae, cfg = _load_source(src)
    writer = export_dictionary_learning if format == "dictionary_learning" else export_saelens
    return writer(ae, dst, cfg, overwrite=overwrite)


def _load_source(src):
    from .dictionary import Dictionary

    ae = Dictionary.from_pretrained(src, device="cpu", dtype=torch.float32)
    p = Path(src)
    cfg_path = (p if p.is_dir() else p.parent) / "config.json"
    cfg = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e})") from None
    return ae, cfg if isinstance(cfg, dict) else {}


def _provenance(ae, tcfg: dict, cfg: dict, fmt: str) -> dict:
    """This library's information kept as an extra key: class, alignment, trainer, norm factor (folded)."""
    from .training import LIBRARY_VERSION

    return {"library_version": LIBRARY_VERSION, "exported_as": fmt, "dict_class": type(ae).__name__,
            "alignment": ae.alignment, **({"k": int(ae.k)} if hasattr(ae, "k") else {}),
            **({"group_sizes": [int(g) for g in ae.group_sizes]} if hasattr(ae, "group_sizes") else {}),
            "trainer_class": tcfg.get("trainer_class"), "steps_done": cfg.get("steps_done"),
            "norm_factor_folded_into_weights": cfg.get("norm_factor")}


@torch.no_grad()
def _check_representable(ae, fmt: str) -> None:
    name = type(ae).__name__
    if fmt == "saelens" and name not in SAELENS_ARCHITECTURES or fmt == "dictionary_learning" and name not in DL_CLASSES:
        raise ValueError(f"a {name} cannot be exported to {fmt} by this version (it exports {', '.join(DL_CLASSES)})")
    if name in GLOBAL_THRESHOLD and float(ae.threshold) < 0:
        raise ValueError("this BatchTopKSAE has no learned inference threshold (threshold = -1); "
                         f"{'dictionary_learning and SAEBench' if fmt != 'saelens' else 'SAELens'} would encode "
                         "differently (every positive activation, or an error). Train past threshold_start_step first")


# ------------------------------------------------------------------------------------------- dictionary_learning
def dictionary_learning_state_dict(ae) -> dict:
    """``ae``'s weights in dictionary_learning 0.1.0's names (``encoder.weight [F, D]``, ``encoder.bias``,
    ``decoder.weight [D, F]``, ``bias`` or ``b_dec``, and ``k``/``threshold`` for TopK/BatchTopK), with the
    effective (aligned) encoder materialised; plain CPU float32 tensors, loadable with
    ``torch.load(weights_only=True)``."""
    name = type(ae).__name__
    if name == "JumpReluAutoEncoder":  # raw parameters, and dictionary_learning does not subtract b_dec
        b_enc = ae.b_enc - ae.W_enc @ ae.b_dec if ae.apply_b_dec_to_input else ae.b_enc
        state = {"W_enc": ae.W_enc.T, "b_enc": b_enc, "W_dec": ae.W_dec.T, "b_dec": ae.b_dec,
                 "threshold": ae.threshold}
    elif name == "MatryoshkaBatchTopKSAE":
        state = {"W_enc": ae.W_enc.T, "b_enc": ae.b_enc, "W_dec": ae.W_dec.T, "b_dec": ae.b_dec,
                 "k": ae.k.to(torch.int), "threshold": ae.threshold.float(), "group_sizes": ae.group_sizes}
    elif name == "AutoEncoder":
        state = {"encoder.weight": ae.W_enc, "encoder.bias": ae.b_enc, "decoder.weight": ae.W_dec, "bias": ae.b_dec}
    else:
        state = {"encoder.weight": ae.W_enc, "encoder.bias": ae.b_enc, "decoder.weight": ae.W_dec, "b_dec": ae.b_dec,
                 "k": ae.k.to(torch.int), "threshold": ae.threshold.float()}
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _dl_trainer_class(tcfg: dict, ae) -> str:
    """dictionary_learning's trainer class name for our trainer (the standard twin of an aligned trainer)."""
    from . import registry

    arch = registry.for_trainer(tcfg.get("trainer_class") or "")
    if arch is not None:
        return arch.extra.get("dictionary_learning_trainer", arch.trainer.__name__)
    defaults = {"AutoEncoder": "StandardTrainer", "AutoEncoderTopK": "TopKTrainer", "BatchTopKSAE": "BatchTopKTrainer",
                "JumpReluAutoEncoder": "JumpReluTrainer", "MatryoshkaBatchTopKSAE": "MatryoshkaBatchTopKTrainer"}
    return defaults[type(ae).__name__]


@torch.no_grad()
def export_dictionary_learning(ae, dst, cfg: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write ``ae`` as a dictionary_learning run folder: ``ae.pt`` (plain state dict) and ``config.json``
    (``{"trainer": {...}, "buffer": {...}}`` with dictionary_learning's class names).

    Args:
        ae: a dictionary of this library (reading raw activations).
        dst: output folder (see :func:`export`).
        cfg: the source's ``config.json`` (for layer, lm_name, buffer settings); None: unknown (written as null).
        overwrite: replace an earlier export of this library.

    Returns:
        the output folder.

    Raises:
        ValueError: a dictionary the format cannot represent; a ``dst`` that may not be replaced.
    """
    _check_representable(ae, "dictionary_learning")
    cfg = cfg or {}
    tcfg = cfg.get("trainer", {}) if isinstance(cfg.get("trainer"), dict) else {}
    trainer = {"trainer_class": _dl_trainer_class(tcfg, ae), "dict_class": type(ae).__name__,
               "activation_dim": ae.activation_dim, "dict_size": ae.dict_size,
               **{k: tcfg.get(k) for k in ("lr", "steps", "seed", "layer", "lm_name", "submodule_name", "wandb_name")},
               **({"k": int(ae.k)} if hasattr(ae, "k") else {}),
               "alignment": ae.alignment, PROVENANCE_KEY: _provenance(ae, tcfg, cfg, "dictionary_learning")}
    out = prepare_output_dir(dst, overwrite)
    with atomic_path(out / "ae.pt") as tmp:
        torch.save(dictionary_learning_state_dict(ae), str(tmp))
    write_json(out / "config.json", {"trainer": trainer, "buffer": cfg.get("buffer", {})})
    return out


# ------------------------------------------------------------------------------------------------------- SAELens
def _saelens_version() -> str:
    """The installed SAELens version (the cfg.json schema written here is SAELens >= 6's), or "6.0.0"."""
    import importlib.metadata as md

    try:
        return md.version("sae-lens")
    except md.PackageNotFoundError:
        return "6.0.0"


def _hook_name(tcfg: dict) -> Optional[str]:
    layer = tcfg.get("layer")
    return f"blocks.{layer}.hook_resid_post" if isinstance(layer, int) else None


@torch.no_grad()
def export_saelens(ae, dst, cfg: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write ``ae`` as the folder ``sae_lens.SAE.load_from_disk`` reads: ``cfg.json`` and
    ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``).

    Architectures: AutoEncoder -> ``standard``; AutoEncoderTopK -> ``topk`` (k); BatchTopKSAE and
    MatryoshkaBatchTopKSAE -> ``jumprelu`` with the global threshold on every feature (SAELens' own inference form
    of BatchTopK); JumpReluAutoEncoder -> ``jumprelu``. ``apply_b_dec_to_input`` is true (we subtract ``b_dec``
    before encoding; a JumpReLU dictionary's own setting), ``normalize_activations`` is ``"none"`` (our norm factor is
    folded into the weights); the hook is ``blocks.{layer}.hook_resid_post`` (TransformerLens' name of the
    residual stream after block ``layer``, which our ``layers.{layer}`` output is).

    Raises:
        ValueError: a dictionary the format cannot represent; a ``dst`` that may not be replaced.
    """
    from safetensors.torch import save_file

    _check_representable(ae, "saelens")
    cfg = cfg or {}
    tcfg = cfg.get("trainer", {}) if isinstance(cfg.get("trainer"), dict) else {}
    arch = SAELENS_ARCHITECTURES[type(ae).__name__]
    tensors = {"W_enc": ae.W_enc.T, "W_dec": ae.W_dec.T, "b_enc": ae.b_enc, "b_dec": ae.b_dec}
    if arch == "jumprelu":
        tensors["threshold"] = ae.threshold if ae.threshold.ndim else torch.full((ae.dict_size,), float(ae.threshold))
    apply_b_dec = getattr(ae, "apply_b_dec_to_input", True)
    tensors = {k: v.detach().float().to("cpu").contiguous().clone() for k, v in tensors.items()}
    scfg = {"architecture": arch, "d_in": ae.activation_dim, "d_sae": ae.dict_size, "dtype": "float32",
            "device": "cpu", "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none",
            "reshape_activations": "none",
            **({"k": int(ae.k), "rescale_acts_by_decoder_norm": False} if arch == "topk" else {}),
            "metadata": {"sae_lens_version": _saelens_version(), "model_name": tcfg.get("lm_name"),
                         "hook_name": _hook_name(tcfg), "hook_head_index": None,
                         "prepend_bos": True, "context_size": (cfg.get("buffer") or {}).get("ctx_len"),
                         PROVENANCE_KEY: _provenance(ae, tcfg, cfg, "saelens")}}
    out = prepare_output_dir(dst, overwrite)
    with atomic_path(out / SAELENS_WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    write_json(out / SAELENS_CONFIG_FILE, scfg)
    return out


# -------------------------------------------------------------------------------------------------- command line
def build_parser(prog: str = "python -m dictionary_learning_aligned") -> argparse.ArgumentParser:
    """The ``export`` command's parser (``export --format F SRC DST [--overwrite]``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Export a dictionary to another library's format.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a dictionary in dictionary_learning's or SAELens' format",
                        description=__doc__.split("Command line")[0])
    ex.add_argument("--format", required=True, choices=FORMATS, help="target format")
    ex.add_argument("src", help="a trained dictionary: trainer folder or weights file")
    ex.add_argument("dst", help="new output folder")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace an earlier export of this library in DST (no other folder is ever replaced)")
    return parser


def main(argv=None) -> int:
    """``export --format dictionary_learning|saelens SRC DST [--overwrite]``; returns the exit status (2 and one
    ``error: ...`` line for a user mistake)."""
    from .cli import run_reporting_errors

    return run_reporting_errors(_export_command, build_parser().parse_args(argv))


def _export_command(args) -> None:
    """The work of :func:`main`: export and say where it went.

    Raises:
        ValueError, TypeError, OSError: see :func:`export`.
    """
    out = export(args.src, args.dst, args.format, overwrite=args.overwrite)
    print(f"wrote {args.format} export of {args.src} to {out}")


if __name__ == "__main__":
    sys.exit(main())
