"""SAEBench harness: run SAEBench's core, SCR, TPP, sparse-probing and autointerp evals on this library's
dictionaries, online (hub model, hub datasets, an OpenAI-compatible judge) or offline (SmolLM2-135M-Instruct from
its GGUF file, local datasets, a local judge served on loopback).

Modules:
* :mod:`.adapter` -- a dictionary of ours as a ``sae_bench.custom_saes.base_sae.BaseSAE``, plus loaders for
  SAEBench's own dictionary_learning runner;
* :mod:`.bridge` -- the ``HookedTransformer`` the evals use (hub name or built from a loaded Hugging Face model);
* :mod:`.data` -- hub dataset names or local substitutes, and the record of which data each eval used;
* :mod:`.judge` -- the autointerp judge: any OpenAI-compatible endpoint or a local loopback server;
* :mod:`.runner` -- runs the evals and writes SAEBench-schema JSON; ``python -m benchmarks run`` is its CLI.

Importing this package does not import ``sae_bench``; the submodules do.
"""
