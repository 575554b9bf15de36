"""Reading and writing dictionary checkpoints, in this library's format and in the formats of the field.

Formats read by :func:`load_dictionary` (and so by ``Dictionary.from_pretrained``):

* this library's ``ae.safetensors`` (tensors plus metadata naming the class and its constructor arguments);
* a plain-state-dict ``ae.pt`` with ``config.json`` beside it, in saprmarks/dictionary_learning's layout
  (``AutoEncoder``, ``AutoEncoderTopK``, ``BatchTopKSAE``, ``JumpReluAutoEncoder``, ``MatryoshkaBatchTopKSAE``;
  the last two through their class's ``from_dictionary_learning_state``) or in ours; read only with
  ``torch.load(weights_only=True)``;
* a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, as written by ``SAE.save_model``) of
  architecture ``standard``, ``topk`` or ``jumprelu`` (a JumpReLU dictionary; or a (Matryoshka) BatchTopK
  dictionary when its threshold is one number for all features and the folder says k, as our export writes it).

Every loaded tensor is checked: names and shapes must match the recorded configuration and every value must be
finite (a checkpoint holding NaN/inf is refused with the tensor named). The writers of foreign formats live in
:mod:`.interop`.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Optional

import torch

from . import alignment as al
from .dtypes import as_dtype, check_device
from .io import atomic_path

FORMAT_NAME = "dictionary_learning_aligned"
FORMAT_VERSION = 1
WEIGHTS_FILE = "ae.safetensors"
LEGACY_WEIGHTS_FILE = "ae.pt"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_CONFIG_FILE = "cfg.json"
#: the weights file of EleutherAI's sparsify, whose folders (beside a ``cfg.json``) are named, not read
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"
#: key under which exports keep this library's provenance (config.json's ``trainer``, SAELens ``metadata``)
PROVENANCE_KEY = "dictionary_learning_aligned"

_DICT_CLASSES: dict[str, type] = {}


class CheckpointError(ValueError):
    """A file or folder is not a readable dictionary checkpoint (missing, corrupt, foreign or mismatched)."""


def register_dictionary(cls):
    """Class decorator: make a dictionary class loadable by name in :func:`load_dictionary`.

    Raises:
        ValueError: another class (of another module or qualified name) is registered under the same name: it
            would replace it, and every checkpoint of that name would load as the new class. Registering the same
            class again (a module imported or reloaded twice) replaces it.
    """
    old = _DICT_CLASSES.get(cls.__name__)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"a dictionary class named {cls.__name__!r} is already registered ({old.__module__}."
                         f"{old.__qualname__}); checkpoints name their class, so give {cls.__module__}."
                         f"{cls.__qualname__} another name")
    _DICT_CLASSES[cls.__name__] = cls
    return cls


def dictionary_classes() -> dict[str, type]:
    """``{class name: class}`` of every registered dictionary class."""
    return dict(_DICT_CLASSES)


# ------------------------------------------------------------------------------------------------------ writing
def save_dictionary(ae, path, config: Optional[dict] = None) -> Path:
    """Write ``ae``'s weights as safetensors, atomically (a crash never leaves a half-written file).

    Args:
        ae: a dictionary of this library.
        path: a folder (``ae.safetensors`` is written inside, with ``config.json`` when ``config`` is given) or a
            ``.safetensors`` file path.
        config: optional JSON-ready dict written to ``config.json`` beside the weights.

    Returns:
        the path of the weights file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / WEIGHTS_FILE
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "dict_class": type(ae).__name__,
            "dictionary_config": json.dumps(ae.dictionary_config())}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in ae.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    if config is not None:
        with atomic_path(path.parent / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2))
    return path


# ------------------------------------------------------------------------------------------------------ reading
def load_dictionary(cls, path, device=None, dtype=None):
    """Load a dictionary from any format listed in the module docstring, without unpickling anything.

    Args:
        cls: the class asked for (``Dictionary`` or a subclass); the stored class must be it or a subclass.
        path: a run folder (``trainer_i``), a SAELens folder, or a weights file.
        device: where to put the weights. dtype: dtype of the weights (default: as stored).

    Returns:
        the dictionary, in eval mode.

    Raises:
        CheckpointError: missing file, corrupt or truncated file, a file that is not a dictionary checkpoint,
            pickled code in a ``.pt`` file, a format or architecture this library cannot represent (named),
            tensors whose names or shapes do not match the configuration, or non-finite weights (named).
    """
    name, kwargs, state, source = read_checkpoint(path)
    ae = build_dictionary(cls, name, kwargs, state, source)
    if dtype is not None:
        ae = ae.to(dtype=as_dtype(dtype))
    if device is not None:
        ae = ae.to(check_device(device))
    return ae.eval()


def read_checkpoint(path) -> tuple[str, dict, dict, Path]:
    """``(dictionary class name, constructor kwargs, state dict in our names, file read)`` of a checkpoint.

    Raises:
        CheckpointError: as :func:`load_dictionary`.
    """
    p = Path(path)
    if p.is_dir() and (p / SAELENS_CONFIG_FILE).is_file() and not (p / WEIGHTS_FILE).is_file():
        if (p / SPARSIFY_WEIGHTS_FILE).is_file() and not (p / SAELENS_WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{p} is a sparsify (EleutherAI) folder ({SAELENS_CONFIG_FILE} + "
                                  f"{SPARSIFY_WEIGHTS_FILE}); this library does not read that format (it reads its "
                                  f"own, dictionary_learning's and SAELens' folders)")
        return (*_read_saelens(p), p / SAELENS_WEIGHTS_FILE)
    weights = _resolve_weights_path(p)
    if weights.suffix == ".pt":
        return (*_read_state_dict_file(weights), weights)
    return (*_read_safetensors(weights), weights)


def build_dictionary(cls, name: str, kwargs: dict, state: dict, source):
    """Instantiate the registered class ``name`` with ``kwargs`` and assign ``state`` after checking it.

    Raises:
        CheckpointError: unknown class (the message says how a class of one's own is registered: its module
            imported, ``--plugins`` on the command line), not a subclass of ``cls``, invalid configuration, tensor names or shapes
            that do not match, or a tensor with NaN/inf values.
    """
    if name not in _DICT_CLASSES:
        raise CheckpointError(f"{source}: unknown dictionary class {name!r}; known: {sorted(_DICT_CLASSES)}. A class "
                              "of your own is known once the module defining it (with @register_dictionary) is "
                              "imported: give `--plugins MODULE` to `benchmarks run` / `evaluate`, or `import MODULE` "
                              "before loading in Python (docs/extending.md)")
    klass = _DICT_CLASSES[name]
    if not issubclass(klass, cls):
        raise CheckpointError(f"{source} holds a {name}, not a {cls.__name__}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated before the tensors are checked
            ae = klass(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid dictionary configuration {kwargs}: {e}") from e
    _check_state(ae, state, name, kwargs, source)
    ae.load_state_dict(_one_float_dtype(state, source), assign=True)
    return ae


def _check_state(ae, state: dict, name: str, kwargs: dict, source) -> None:
    expected = ae.state_dict()
    if set(state) != set(expected):
        raise CheckpointError(f"{source}: tensors {sorted(state)} do not match a {name} with {kwargs} "
                              f"(expected {sorted(expected)})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{source}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)} "
                f"for activation_dim={ae.activation_dim}, dict_size={ae.dict_size}")
        if v.is_floating_point() != expected[k].is_floating_point():
            kind = "floating-point" if expected[k].is_floating_point() else "integer"
            raise CheckpointError(f"{source}: tensor {k} has dtype {v.dtype}, expected a {kind} tensor ({name})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: tensor(s) {bad} hold NaN or infinite values; refusing to load a "
                              f"dictionary whose outputs would be silently wrong")


def _one_float_dtype(state: dict, source) -> dict:
    """``state`` with every floating-point tensor in one dtype: a checkpoint whose tensors were stored in different
    float dtypes (e.g. float16 biases beside float32 weights) is promoted, losslessly, to the smallest dtype that
    holds them all (:func:`torch.promote_types`), with a warning; otherwise the loaded dictionary's products would
    fail on the first input."""
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) < 2:
        return state
    common = functools.reduce(torch.promote_types, sorted(dtypes, key=str))
    warnings.warn(f"{source}: tensors stored in several float dtypes {sorted(map(str, dtypes))}; loaded as {common}")
    return {k: v.to(common) if v.is_floating_point() else v for k, v in state.items()}


def _resolve_weights_path(p: Path) -> Path:
    if p.is_dir():
        for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} holds no {WEIGHTS_FILE} (or {LEGACY_WEIGHTS_FILE} with config.json, or a "
                              f"SAELens {SAELENS_CONFIG_FILE} with {SAELENS_WEIGHTS_FILE})")
    if p.is_symlink() and not p.exists():
        raise CheckpointError(f"no checkpoint at {p}: a symbolic link to nothing (broken, or a loop of links)")
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}: the file does not exist")
    return p


def _open_safetensors(weights: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several error types for corrupt/truncated headers
        raise CheckpointError(f"{weights} is not a readable safetensors file ({type(e).__name__}: {e})") from e


def _read_safetensors(weights: Path):
    meta, state = _open_safetensors(weights)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{weights} is not a {FORMAT_NAME} checkpoint (metadata: {meta or 'none'})")
    try:
        version = int(meta.get("format_version", -1))
    except ValueError:
        raise CheckpointError(f"{weights}: invalid format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{weights} was written by a newer format version {meta['format_version']} (this library reads "
            f"<= {FORMAT_VERSION}); upgrade dictionary_learning_aligned")
    try:
        kwargs = json.loads(meta["dictionary_config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{weights}: missing or invalid dictionary_config metadata") from e
    return meta.get("dict_class", ""), kwargs, state


def _torch_load_state_dict(weights: Path) -> dict:
    import pickle

    try:
        obj = torch.load(str(weights), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "invalid load key" in str(e):
            raise CheckpointError(f"{weights} is not a torch checkpoint ({e})") from e
        raise CheckpointError(
            f"{weights} contains pickled objects other than tensors; refusing to load it (only plain state "
            f"dicts are read, with torch.load(weights_only=True)): {e}") from e
    except Exception as e:
        raise CheckpointError(f"{weights} is not a readable torch file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{weights} does not hold a state dict of tensors")
    return obj


def _read_state_dict_file(weights: Path):
    """A ``.pt`` state dict with ``config.json`` beside it: dictionary_learning's layout or ours."""
    state = _torch_load_state_dict(weights)
    cfg_path = weights.parent / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{weights}: a .pt checkpoint needs config.json beside it")
    try:
        cfg = json.loads(cfg_path.read_text())
        tcfg = cfg.get("trainer", cfg)
        kwargs = {"activation_dim": int(tcfg["activation_dim"]), "dict_size": int(tcfg["dict_size"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{cfg_path}: cannot read activation_dim and dict_size ({e})") from e
    name = tcfg.get("dict_class", "AutoEncoder")
    alignment = tcfg.get("alignment")
    if name in DL_LAYOUTS and set(state) == set(DL_LAYOUTS[name]):
        state = {DL_LAYOUTS[name][k]: v for k, v in state.items()}
    elif name in DL_OWN_LAYOUT:
        kwargs, state = _from_dl_own_layout(name, state, tcfg, kwargs, weights)
    if "k" in state and "k" not in kwargs:
        kwargs["k"] = _config_k(tcfg, state, weights)
    kwargs["alignment"] = alignment
    if alignment is not None and "W_enc" in state:
        state = _as_aligned_state(state, alignment, weights)
    return name, kwargs, state


# dictionary_learning 0.1.0 state-dict names -> ours, for its nn.Linear dictionaries (weights [out, in], as ours)
_DL_LINEAR = {"encoder.weight": "W_enc", "encoder.bias": "b_enc", "decoder.weight": "W_dec"}
DL_LAYOUTS = {
    "AutoEncoder": {**_DL_LINEAR, "bias": "b_dec"},
    "AutoEncoderTopK": {**_DL_LINEAR, "b_dec": "b_dec", "k": "k", "threshold": "threshold"},
    "BatchTopKSAE": {**_DL_LINEAR, "b_dec": "b_dec", "k": "k", "threshold": "threshold"},
}
#: dictionary_learning classes stored as raw parameters (``W_enc [D, F]``, ``W_dec [F, D]``); our class of the
#: same name maps them with its ``from_dictionary_learning_state`` classmethod
DL_OWN_LAYOUT = ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE")


def _from_dl_own_layout(name: str, state: dict, tcfg: dict, kwargs: dict, source) -> tuple[dict, dict]:
    klass = _DICT_CLASSES.get(name)
    if klass is None or not hasattr(klass, "from_dictionary_learning_state"):
        raise CheckpointError(f"{source}: a dictionary_learning {name}; this version of dictionary_learning_aligned "
                              f"has no such dictionary to load it into (missing: a registered class {name!r})")
    W_dec = state.get("W_dec")
    ours = "V" in state or (W_dec is not None and tuple(W_dec.shape) == (kwargs["activation_dim"], kwargs["dict_size"])
                            and kwargs["activation_dim"] != kwargs["dict_size"])
    if ours:  # an ae.pt in our own names and layout
        return {**kwargs, **{k: tcfg[k] for k in ("k", "group_sizes", "apply_b_dec_to_input") if k in tcfg}}, state
    try:
        their_kwargs, mapped = klass.from_dictionary_learning_state(state, tcfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    return {**kwargs, **their_kwargs}, mapped


def _config_k(tcfg: dict, state: dict, source) -> int:
    if state["k"].numel() != 1 or state["k"].is_floating_point():
        raise CheckpointError(f"{source}: tensor k must hold one integer, got {state['k'].dtype} of shape "
                              f"{tuple(state['k'].shape)}")
    k = int(state["k"])
    if "k" in tcfg and tcfg["k"] is not None and int(tcfg["k"]) != k:
        warnings.warn(f"{source}: config.json says k={tcfg['k']} but the weights hold k={k} (the value at the "
                      f"end of training); using k={k}")
    return k


def _as_aligned_state(state: dict, alignment: str, source) -> dict:
    """An exported (materialised) encoder ``W_enc`` back into the stored parameter of ``alignment``: ``V =
    W_enc`` for the reparameterized modes (an aligned encoder is a fixed point of its map, up to float
    rounding), nothing for ``"tied"`` (the encoder must equal ``W_dec.T``), ``W_enc`` itself otherwise."""
    try:
        al.check_mode(alignment)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    state = dict(state)
    if alignment in al.REPARAMETERIZED:
        state["V"] = state.pop("W_enc")
    elif alignment == "tied":
        W_enc = state.pop("W_enc")
        if not torch.allclose(W_enc, state["W_dec"].T, atol=1e-6, rtol=1e-5):
            raise CheckpointError(f"{source}: alignment 'tied' but the stored encoder is not W_dec.T")
    return state


def _read_saelens(folder: Path):
    """A SAELens folder: ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec [d_sae,
    d_in]``, ``b_enc``, ``b_dec``, ``threshold`` for jumprelu)."""
    try:
        cfg = json.loads((folder / SAELENS_CONFIG_FILE).read_text())
        arch, d_in, d_sae = cfg["architecture"], int(cfg["d_in"]), int(cfg["d_sae"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / SAELENS_CONFIG_FILE}: not a SAELens config (needs architecture, d_in, "
                              f"d_sae): {e}") from e
    if not (folder / SAELENS_WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder}: SAELens folder without {SAELENS_WEIGHTS_FILE}")
    _check_saelens_settings(cfg, folder)
    _, raw = _open_safetensors(folder / SAELENS_WEIGHTS_FILE)
    expected = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())
    if set(raw) != expected:
        raise CheckpointError(f"{folder}: SAELens {arch} weights {sorted(raw)}, expected {sorted(expected)}")
    state = {"W_enc": raw["W_enc"].T.contiguous(), "W_dec": raw["W_dec"].T.contiguous(), "b_dec": raw["b_dec"],
             "b_enc": raw["b_enc"]}
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    ours = meta.get(PROVENANCE_KEY) if isinstance(meta.get(PROVENANCE_KEY), dict) else {}
    kwargs = {"activation_dim": d_in, "dict_size": d_sae}
    name = _saelens_class(arch, cfg, ours, raw, state, kwargs, folder)
    if not cfg.get("apply_b_dec_to_input", True) and name != "JumpReluAutoEncoder":
        # ours subtracts b_dec before encoding: W_enc x + b_enc = W_enc (x - b_dec) + (b_enc + W_enc b_dec)
        state["b_enc"] = raw["b_enc"] + state["W_enc"] @ raw["b_dec"]
    kwargs["alignment"] = ours.get("alignment")
    if kwargs["alignment"] is not None:
        state = _as_aligned_state(state, kwargs["alignment"], folder)
    return name, kwargs, state


def _check_saelens_settings(cfg: dict, folder: Path) -> None:
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise CheckpointError(f"{folder}: normalize_activations={cfg['normalize_activations']!r} is not supported "
                              f"(the scale it applies is not stored with the weights); fold it into the weights "
                              f"and set it to 'none'")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise CheckpointError(f"{folder}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    if cfg["architecture"] not in ("standard", "topk", "jumprelu"):
        raise CheckpointError(f"{folder}: SAELens architecture {cfg['architecture']!r} cannot be represented by "
                              f"this library (it reads standard, topk and jumprelu)")


def _saelens_class(arch, cfg, ours, raw, state, kwargs, folder) -> str:
    """Our dictionary class for a SAELens architecture; fills ``kwargs`` (k) and ``state`` (k, threshold)."""
    if arch == "standard":
        return "AutoEncoder"
    if arch == "topk":
        if cfg.get("rescale_acts_by_decoder_norm") and not _unit_rows(raw["W_dec"]):
            raise CheckpointError(f"{folder}: topk with rescale_acts_by_decoder_norm and decoder rows that are "
                                  f"not unit norm cannot be represented (our TopK selects on raw activations)")
        kwargs["k"] = _int_field(cfg, "k", folder / SAELENS_CONFIG_FILE)
        state.update(k=torch.tensor(kwargs["k"], dtype=torch.int), threshold=torch.tensor(-1.0))
        return "AutoEncoderTopK"
    thr = raw["threshold"]
    if ours.get("dict_class") in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE") and bool((thr == thr[0]).all()):
        kwargs["k"] = _int_field(ours, "k", f"{folder / SAELENS_CONFIG_FILE}: metadata.{PROVENANCE_KEY}")
        state.update(k=torch.tensor(kwargs["k"], dtype=torch.int), threshold=thr[0].clone().float())
        if "group_sizes" in ours:
            kwargs["group_sizes"] = [int(g) for g in ours["group_sizes"]]
            state["group_sizes"] = torch.tensor(kwargs["group_sizes"])
        return ours["dict_class"]
    if "JumpReluAutoEncoder" not in _DICT_CLASSES:
        raise CheckpointError(f"{folder}: SAELens jumprelu with per-feature thresholds; this version of "
                              f"dictionary_learning_aligned has no JumpReLU dictionary (missing: a registered class "
                              f"'JumpReluAutoEncoder')")
    kwargs["apply_b_dec_to_input"] = bool(cfg.get("apply_b_dec_to_input", True))
    state["threshold"] = thr
    return "JumpReluAutoEncoder"


def _int_field(cfg: dict, key: str, where) -> int:
    """``cfg[key]`` as an int; CheckpointError naming ``where`` when it is missing or not a whole number."""
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise CheckpointError(f"{where}: {key} must be an integer, got {v!r}")
    return int(v)


def _unit_rows(W: torch.Tensor) -> bool:
    return bool(torch.allclose(W.float().norm(dim=-1), torch.ones(W.shape[0]), atol=1e-5))
