"""Our dictionaries as SAEBench SAEs (``sae_bench.custom_saes.base_sae.BaseSAE``).

Conventions differ: we store ``W_enc [dict_size, activation_dim]`` and ``W_dec [activation_dim, dict_size]`` (unit
norm columns); SAEBench wants ``W_enc [d_in, d_sae]`` and ``W_dec [d_sae, d_in]`` with unit-norm rows. The adapter
transposes, and if a decoder column ``d_i`` is not exactly unit norm (norm ``n_i``) it rescales ``d_i -> d_i / n_i``
and ``e_i -> n_i e_i``, ``b_enc_i -> n_i b_enc_i`` so that ``decode(encode(x))`` is unchanged; the feature values
are then ``n_i`` times ours. ``encode`` calls the source dictionary's own ``encode`` (its selection: ReLU, top-k per
token, the BatchTopK threshold, JumpReLU thresholds, or any other dictionary's rule) and multiplies by ``n_i``, so the
SAEBench SAE computes exactly what ``dictionary.encode`` computes, for every alignment mode and every
:class:`~dictionary_learning_aligned.dictionary.Dictionary` subclass, registered or a user's own.

:func:`register_dictionary_learning_loaders` makes SAEBench's own runner
(``sae_bench.custom_saes.run_all_evals_dictionary_learning_saes``) load our checkpoints from a local folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch

from . import import_saebench
from dictionary_learning_aligned import registry
from dictionary_learning_aligned.dictionary import CheckpointError, Dictionary

#: SAEBench ``cfg.architecture`` label per registry ``saebench_kind`` where SAEBench's name differs
SAEBENCH_LABELS = {"relu": "standard", "batchtopk": "batch_topk"}
#: trainer classes of this library (``config.json["trainer"]["trainer_class"]``): every registered trainer
OUR_TRAINER_CLASSES = tuple(registry.trainer_classes())


def _base_sae_class():
    import_saebench()
    from sae_bench.custom_saes.base_sae import BaseSAE

    return BaseSAE


def _make_class():
    BaseSAE = _base_sae_class()

    class DictionarySAE(BaseSAE):
        """A dictionary of ours as a SAEBench ``BaseSAE``.

        Weights (SAEBench layout): ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (unit-norm rows), ``b_enc
        [d_sae]``, ``b_dec [d_in]``; buffer ``feature_scale [d_sae]`` (the decoder norms ``n_i`` folded into the
        encoder; ones for a unit-norm decoder); submodule ``source``, a copy of the dictionary, whose ``encode``
        selects the features.

        ``encode(x [..., d_in]) -> source.encode(x) * feature_scale [..., d_sae]``, ``decode(f) -> f @ W_dec + b_dec
        [..., d_in]``, ``forward = decode(encode)``. Build it with :func:`to_saebench`.
        """

        def __init__(self, source: Dictionary, model_name: str, hook_layer: int, device, dtype,
                     hook_name: Optional[str], kind: str):
            super().__init__(source.activation_dim, source.dict_size, model_name, hook_layer, device, dtype,
                             hook_name)
            self.kind = kind
            self.source = source.to(device=device, dtype=dtype).eval().requires_grad_(False)
            self.register_buffer("feature_scale", torch.ones(source.dict_size, dtype=dtype, device=device))

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            """Features ``[..., d_sae]`` of activations ``x [..., d_in]``: the source dictionary's ``encode``
            (its own selection), times ``feature_scale``."""
            return self.source.encode(x.to(self.W_dec.dtype)) * self.feature_scale

        def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
            """``f @ W_dec + b_dec``: ``[..., d_sae] -> [..., d_in]``."""
            return feature_acts @ self.W_dec + self.b_dec

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Reconstruction ``[..., d_in]``."""
            return self.decode(self.encode(x))

    return DictionarySAE


_CLASS = None


def saebench_sae_class():
    """The ``DictionarySAE`` class (a subclass of SAEBench's ``BaseSAE``; built on first use so that importing
    this module does not import sae_bench)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


def saebench_kind(dictionary: Dictionary) -> str:
    """The registry's ``saebench_kind`` of the architecture whose dictionary class is the closest base class of
    ``dictionary``'s class (``"custom"`` for a Dictionary subclass no architecture registers).

    Raises:
        TypeError: ``dictionary`` is not a :class:`Dictionary` (the adapter needs its ``encode``, ``W_enc``,
            ``W_dec``, ``b_enc``, ``b_dec``, ``activation_dim`` and ``dict_size``).
    """
    if not isinstance(dictionary, Dictionary):
        raise TypeError(f"no SAEBench adapter for {type(dictionary).__name__}: not a "
                        f"dictionary_learning_aligned Dictionary subclass")
    mro = type(dictionary).__mro__
    owners = [(mro.index(a.dict_class), a.saebench_kind) for a in registry.architectures() if a.dict_class in mro]
    return min(owners)[1] if owners else "custom"


@torch.no_grad()
def to_saebench(dictionary: Dictionary, model_name: str, hook_layer: int, hook_name: Optional[str] = None,
                device=None, dtype: torch.dtype = torch.float32):
    """Convert a dictionary of ours into a SAEBench ``BaseSAE`` computing the same function.

    Args:
        dictionary: any :class:`Dictionary` (registered architectures and users' own subclasses), in any alignment
            mode; its weights ``W_enc [dict_size, activation_dim]``, ``W_dec [activation_dim, dict_size]``,
            ``b_enc [dict_size]``, ``b_dec [activation_dim]`` are read (``W_enc`` is the effective encoder,
            computed from ``V`` for the reparameterized modes) and a copy of it encodes.
        model_name: the model name SAEBench uses to load the language model (``cfg.model_name``).
        hook_layer: the block whose output the dictionary reads.
        hook_name: TransformerLens hook; default ``blocks.{hook_layer}.hook_resid_post`` (the output of decoder
            block ``hook_layer``, which is what our trainers read).
        device: target device (default: the dictionary's).
        dtype: target dtype (float32 by default).

    Returns:
        a ``DictionarySAE`` with ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (unit-norm rows), ``b_enc``,
        ``b_dec``, buffer ``feature_scale``, ``cfg.architecture`` from the registry's ``saebench_kind``
        (``standard``, ``topk``, ``batch_topk``, ``jumprelu``, ``matryoshka_batch_topk``; the class name for an
        unregistered dictionary class) and extra attributes ``alignment`` (the source's mode) and ``kind``.

    Raises:
        TypeError: not a :class:`Dictionary`. ValueError: a decoder column of zero or non-finite norm, or
        non-finite weights (the conversion would not preserve the function).
    """
    kind = saebench_kind(dictionary)
    device = torch.device(device) if device is not None else dictionary.W_dec.device
    W_enc = dictionary.W_enc.detach().double()  # [F, D]
    W_dec = dictionary.W_dec.detach().double()  # [D, F]
    norms = W_dec.norm(dim=0)  # [F]
    if not torch.isfinite(W_enc).all() or not torch.isfinite(W_dec).all():
        raise ValueError("dictionary has non-finite weights; cannot convert it")
    if (norms <= 0).any():
        raise ValueError(f"{int((norms <= 0).sum())} decoder columns have zero norm; cannot normalize them")
    cls = saebench_sae_class()
    sae = cls(copy.deepcopy(dictionary), model_name, int(hook_layer), device, dtype, hook_name, kind)
    sae.W_enc.copy_((W_enc * norms[:, None]).T.to(dtype))
    sae.W_dec.copy_((W_dec / norms).T.to(dtype))
    sae.b_enc.copy_((dictionary.b_enc.detach().double() * norms).to(dtype))
    sae.b_dec.copy_(dictionary.b_dec.detach().to(dtype))
    sae.feature_scale.copy_(norms.to(dtype))
    sae.cfg.architecture = type(dictionary).__name__ if kind == "custom" else SAEBENCH_LABELS.get(kind, kind)
    sae.cfg.dtype = str(dtype).removeprefix("torch.")
    sae.alignment = dictionary.alignment
    return sae.eval()


def read_run_config(folder) -> dict:
    """``config.json`` beside a dictionary (``{}`` when absent).

    Raises:
        CheckpointError: the file exists but is not valid JSON, or is not an object whose ``trainer`` (when
            present) is an object.
    """
    p = Path(folder) / "config.json"
    if not p.is_file():
        return {}
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("trainer", {}), dict):
        raise CheckpointError(f"{p} is not a run config (a JSON object with a 'trainer' object)")
    return cfg


def load_saebench_sae(path, model_name: Optional[str] = None, hook_layer: Optional[int] = None,
                      hook_name: Optional[str] = None, device="cpu", dtype: torch.dtype = torch.float32):
    """Load a dictionary folder (``ae.safetensors`` + ``config.json``, as written by our trainers) as a SAEBench
    SAE.

    Args:
        path: the dictionary folder (``trainer_i``) or weights file.
        model_name: SAEBench model name; default ``config["trainer"]["lm_name"]``.
        hook_layer: default ``config["trainer"]["layer"]``.
        hook_name, device, dtype: as :func:`to_saebench`.

    Returns:
        ``(sae, config)``: the ``DictionarySAE`` and the run config dict.

    Raises:
        CheckpointError: unreadable checkpoint or ``config.json``. ValueError: no layer or model name given and
        none recorded in ``config.json``, or a layer that is not an integer >= 0.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg = read_run_config(folder)
    tcfg = cfg.get("trainer", {})
    layer = hook_layer if hook_layer is not None else tcfg.get("layer")
    name = model_name or tcfg.get("lm_name")
    if layer is None:
        raise ValueError(f"{folder}: config.json records no trainer.layer; pass hook_layer")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"{folder}: the layer must be a block index (an integer >= 0), got {layer!r}")
    if not name:
        raise ValueError(f"{folder}: config.json records no trainer.lm_name; pass model_name")
    ae = Dictionary.from_pretrained(path, device="cpu")
    return to_saebench(ae, name, int(layer), hook_name, device, dtype), cfg


# --------------------------------------------------------------------- SAEBench's dictionary_learning runner

def _is_ours(folder: Path) -> bool:
    if (folder / "ae.safetensors").is_file():
        return True
    return read_run_config(folder).get("library") == "dictionary_learning_aligned"


def register_dictionary_learning_loaders() -> None:
    """Let SAEBench's dictionary_learning runner (``sae_bench.custom_saes.run_all_evals_dictionary_learning_saes``)
    load this library's checkpoints, also from a local folder.

    That runner only downloads from the hub: ``load_dictionary_learning_sae(repo_id, location, ...)`` reads
    ``config.json`` under its download folder and calls ``TRAINER_LOADERS[trainer_class](repo_id=, filename=
    f"{location}/ae.pt", ...)``, whose loaders call ``hf_hub_download``. After this call (idempotent):

    * ``repo_id`` may be a local folder: ``location`` is then a sub-folder of it (e.g. ``"trainer_0"``);
      ``get_all_hf_repo_autoencoders(local_folder)`` lists the sub-folders holding a ``config.json``;
    * ``TRAINER_LOADERS`` has an entry for each of our trainer classes (:data:`OUR_TRAINER_CLASSES`); where a name
      is also one of dictionary_learning's (``StandardTrainer``, ``TopKTrainer``, ``BatchTopKTrainer``,
      ``PAnnealTrainer``), our loader is used for folders written by this library and SAEBench's original loader
      otherwise.

    The runner's ``run_evals`` still catches and prints every exception (it never raises), and its
    ``MODEL_CONFIGS`` must list the model; prefer ``python -m benchmarks run``.
    """
    import_saebench()
    import sae_bench.custom_saes.run_all_evals_dictionary_learning_saes as runner

    if getattr(runner, "_dla_registered", False):
        return
    orig_load, orig_list = runner.load_dictionary_learning_sae, runner.get_all_hf_repo_autoencoders

    def make_loader(original):
        def loader(repo_id: str, filename: str, model_name: str, device, dtype, layer=None, **kw):
            folder = Path(repo_id) / Path(filename).parent
            if Path(repo_id).is_dir() and _is_ours(folder):
                sae, _ = load_saebench_sae(folder, model_name=model_name, hook_layer=layer, device=device,
                                           dtype=dtype)
                return sae
            if original is None:
                raise CheckpointError(f"{folder} is not a local checkpoint of dictionary_learning_aligned "
                                      f"(repo_id={repo_id!r}, filename={filename!r})")
            return original(repo_id=repo_id, filename=filename, model_name=model_name, device=device,
                            dtype=dtype, layer=layer, **kw)
        return loader

    for name in OUR_TRAINER_CLASSES:
        runner.TRAINER_LOADERS[name] = make_loader(runner.TRAINER_LOADERS.get(name))

    def load_dictionary_learning_sae(repo_id, location, model_name, device, dtype, layer=None,
                                     download_location="downloaded_saes"):
        if not Path(repo_id).is_dir():
            return orig_load(repo_id, location, model_name, device, dtype, layer, download_location)
        cfg = read_run_config(Path(repo_id) / location)
        tc = cfg.get("trainer", {}).get("trainer_class")
        if tc not in runner.TRAINER_LOADERS:
            raise CheckpointError(f"{Path(repo_id) / location}: unknown trainer_class {tc!r}; known: "
                                  f"{sorted(runner.TRAINER_LOADERS)}")
        return runner.TRAINER_LOADERS[tc](repo_id=repo_id, filename=f"{location}/ae.pt", model_name=model_name,
                                          device=device, dtype=dtype, layer=layer)

    def get_all_hf_repo_autoencoders(repo_id, download_location="downloaded_saes"):
        if not Path(repo_id).is_dir():
            return orig_list(repo_id, download_location)
        root = Path(repo_id)
        return sorted(str(p.parent.relative_to(root)) for p in root.rglob("config.json") if p.parent != root)

    runner.load_dictionary_learning_sae = load_dictionary_learning_sae
    runner.get_all_hf_repo_autoencoders = get_all_hf_repo_autoencoders
    runner._dla_registered = True


__all__ = ["to_saebench", "load_saebench_sae", "saebench_sae_class", "saebench_kind",
           "register_dictionary_learning_loaders", "read_run_config", "OUR_TRAINER_CLASSES"]
