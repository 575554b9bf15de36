"""SAEBench harness: run SAEBench's core, SCR, TPP, sparse-probing and autointerp evals on this library's
dictionaries, online (hub model, hub datasets, an OpenAI-compatible judge) or offline (SmolLM2-135M-Instruct from
its GGUF file, local datasets, a local judge served on loopback).

Modules:
* :mod:`.artifacts` -- ``--artifacts DIR``: SAEBench's LLM activations and probes kept across runs and processes,
  under a key of everything they depend on, computed once under a file lock;
* :mod:`.adapter` -- a dictionary of ours as a ``sae_bench.custom_saes.base_sae.BaseSAE``, plus loaders for
  SAEBench's own dictionary_learning runner;
* :mod:`.bridge` -- the ``HookedTransformer`` the evals use (hub name or built from a loaded Hugging Face model);
* :mod:`.data` -- hub dataset names or local substitutes, and the record of which data each eval used;
* :mod:`.judge` -- the autointerp judge: any OpenAI-compatible endpoint or a local loopback server;
* :mod:`.runner` -- runs the evals and writes SAEBench-schema JSON; ``python -m benchmarks run`` is its CLI.

Importing this package does not import ``sae_bench``; the submodules do.
"""

import sys as _sys

#: the SAEBench modules the harness runs, imported together by :func:`import_saebench`. SAEBench's
#: dictionary_learning runner is not among them: it imports ``sae_probes`` (a 44 MB wheel of datasets) that none of
#: the five evals uses; :func:`adapter.register_dictionary_learning_loaders` imports it when asked.
SAEBENCH_MODULES = ("sae_bench.custom_saes.base_sae", "sae_bench.evals.core.main", "sae_bench.evals.scr_and_tpp.main",
                    "sae_bench.evals.sparse_probing.main", "sae_bench.evals.autointerp.main")


def import_saebench() -> None:
    """Import SAEBench's modules, also in a process where nnsight is already imported.

    nnsight mounts ``.save`` on ``object`` (an unhashable ``instancemethod``), and beartype (imported by SAEBench,
    TransformerLens, jaxtyping) builds a frozenset of ``object``'s callables when it is first imported, failing with
    ``TypeError: unhashable type: 'instancemethod'``. If nnsight's mount is present and beartype not yet imported,
    the mount is removed while SAEBench is imported and put back afterwards (nnsight's own ``unmount``/``mount``).

    Raises:
        ModuleNotFoundError: sae-bench is not installed; the message names the install step
            (``bash scripts/install.sh --saebench``, which installs ``requirements-saebench.txt``).
    """
    import importlib

    mounted = "beartype" not in _sys.modules and "save" in object.__dict__ and "nnsight" in _sys.modules
    if mounted:
        import nnsight
        from nnsight._c import mount, unmount

        unmount("save")
    try:
        for name in SAEBENCH_MODULES:
            importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "sae_bench":
            raise ModuleNotFoundError(f"SAEBench is not installed (no module {e.name!r}); install it with: bash "
                                      f"scripts/install.sh --saebench (requirements-saebench.txt)", name=e.name) from e
        raise
    finally:
        if mounted:
            mount(nnsight.save, "save")


if "nnsight" in _sys.modules and "beartype" not in _sys.modules:
    import_saebench()
