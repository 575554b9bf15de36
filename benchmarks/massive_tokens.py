"""How much of a dictionary's reconstruction error sits on the LM's massive-activation tokens.

Our training and evaluation drop tokens whose activation norm exceeds 10x the median (SmolLM2 has a few with norms
~100x the typical one); SAEBench's core eval keeps them (it leaves out only BOS/EOS/padding). This script reads
held-out activations **without** that filter (BOS still removed), reconstructs them with each dictionary of a
results store, and reports, per dictionary: the pooled fraction of variance explained on all tokens and on the
tokens under the threshold, the share of tokens over it, their share of the squared error, and the mean squared
error on each side. It was written to test the explanation given in results/reproduce_small/README.md for
SAEBench's low pooled explained variance of the aligned dict_size 16384 dictionaries (numbers in
results/reproduce_small/massive_tokens/).

    python -m benchmarks.massive_tokens --results STORE --records 'sizes__topk__*__d16384__k64__s0' \
        --device cuda --batches 20 --out massive_tokens.json

Model, layer and corpus come from the first matching record (``--corpus`` overrides the corpus). Prints one line
per dictionary and writes the numbers as JSON. Raises FileNotFoundError when no record matches or names a
dictionary, ValueError for a bad ``--multiple``.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import sys
import time
from pathlib import Path

import torch


def error_split(x: torch.Tensor, x_hat: torch.Tensor, norms: torch.Tensor, threshold: float) -> dict:
    """Pooled squared-error statistics of a reconstruction, all tokens and split at a norm threshold.

    Args:
        x, x_hat: activations and their reconstructions, ``[n_tokens, activation_dim]``.
        norms: ``||x||`` per token, ``[n_tokens]``.
        threshold: tokens with ``norm > threshold`` count as massive.

    Returns:
        ``fve_all`` / ``fve_kept`` (1 - sum of squared errors / sum of squared deviations from the mean of the same
        tokens), ``frac_massive`` (share of tokens over the threshold), ``sse_share_massive`` (their share of the
        squared error), ``mse_massive`` / ``mse_kept`` (mean over tokens of ``||x - x_hat||^2``).
    """
    sse = (x - x_hat).pow(2).sum(-1)
    big = norms > threshold

    def fve(mask):
        xs = x[mask]
        return float(1 - sse[mask].sum() / (xs - xs.mean(0)).pow(2).sum()) if mask.any() else float("nan")

    return {"fve_all": fve(torch.ones_like(big)), "fve_kept": fve(~big), "frac_massive": float(big.float().mean()),
            "sse_share_massive": float(sse[big].sum() / sse.sum()),
            "mse_massive": float(sse[big].mean()) if big.any() else float("nan"), "mse_kept": float(sse[~big].mean())}


def main(argv=None) -> int:
    """Command line (see the module docstring); returns 0."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.massive_tokens", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="results store (records/ and the dictionaries)")
    p.add_argument("--records", required=True, help="glob on record ids")
    p.add_argument("--corpus", help="text source (default: the first record's corpus)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--batches", type=int, default=20, help="batches of --batch-size held-out tokens (default 20)")
    p.add_argument("--batch-size", type=int, default=8192, help="tokens per batch (default 8192)")
    p.add_argument("--multiple", type=float, default=10.0, help="massive = norm > MULTIPLE x the median norm "
                   "(default 10, the training filter's)")
    p.add_argument("--out", help="JSON output file (default: print only)")
    args = p.parse_args(argv)
    if not args.multiple > 1:
        raise ValueError(f"--multiple must be > 1, got {args.multiple}")
    from dictionary_learning_aligned.cli import default_device

    args.device = args.device or default_device()

    from nnsight import LanguageModel

    from dictionary_learning_aligned.buffer import ActivationBuffer
    from dictionary_learning_aligned.data import iter_texts
    from dictionary_learning_aligned.dictionary import Dictionary
    from dictionary_learning_aligned.models import get_layer, load_language_model
    from dictionary_learning_aligned.records import iter_records

    store = Path(args.results)
    recs = [r for r in iter_records(store) if fnmatch.fnmatch(r["id"], args.records) and r.get("paths", {}).get("dictionary")]
    if not recs:
        raise FileNotFoundError(f"no record of {store} matches {args.records!r} and names a dictionary")
    first = recs[0]
    hf, tok = load_language_model(first["model"], device=args.device)
    lm = LanguageModel(hf, tokenizer=copy.deepcopy(tok))
    buf = ActivationBuffer(iter_texts(args.corpus or first["corpus"], split="test", seed=0), lm,
                           get_layer(lm, first["layer"]), d_submodule=hf.config.hidden_size, n_ctxs=2048,
                           ctx_len=128, refresh_batch_size=256, out_batch_size=args.batch_size, device=args.device,
                           remove_bos=True, max_norm_multiple=None, seed=0)
    t = time.time()
    xs = []
    for _ in range(args.batches):
        try:
            xs.append(next(buf).float())
        except StopIteration:
            break
    x = torch.cat(xs)
    norms = x.norm(dim=-1)
    threshold = args.multiple * float(norms.median())
    out = {"command": " ".join(["python", "-m", "benchmarks.massive_tokens", *(argv if argv is not None else sys.argv[1:])]),
           "n_tokens": x.shape[0], "median_norm": float(norms.median()), "max_norm": float(norms.max()),
           "threshold": threshold, "dictionaries": {}}
    print(f"{x.shape[0]:,} held-out tokens (BOS removed, no norm filter) in {time.time() - t:.0f} s; median norm "
          f"{out['median_norm']:.1f}, max {out['max_norm']:.1f}, massive = norm > {threshold:.1f}")
    with torch.no_grad():
        for r in recs:
            ae = Dictionary.from_pretrained(store / r["paths"]["dictionary"], device=args.device)
            x_hat = torch.cat([ae(x[i:i + args.batch_size]).float() for i in range(0, x.shape[0], args.batch_size)])
            s = error_split(x, x_hat, norms, threshold)
            out["dictionaries"][r["id"]] = s
            print(f"{r['id']}: FVE all {s['fve_all']:.4f}, without massive {s['fve_kept']:.4f}; massive tokens "
                  f"{s['frac_massive']:.2%} of tokens, {s['sse_share_massive']:.1%} of the squared error; MSE "
                  f"massive {s['mse_massive']:.1f} vs others {s['mse_kept']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
