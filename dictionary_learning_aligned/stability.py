"""Cross-seed stability of dictionaries: how well the decoder directions of one run are found again in another.

Definitions (for runs ``A`` and ``B`` trained with different seeds on the same data; ``d`` are unit-normalised
decoder columns):

* per-feature **max cosine similarity** of feature ``i`` of ``A`` to run ``B``: ``max_j <d^A_i, d^B_j>``; with
  more than two runs, the per-feature value of a run is averaged over the other runs;
* **MCS** (mean max cosine similarity): the mean of those values over features, in both directions (A->B and
  B->A), averaged over all ordered pairs of runs — the "mean max cosine similarity" of Sharkey et al. (2022,
  "Taking features out of superposition with sparse autoencoders", interim report) as used by Paulo & Belrose
  (2025, "Sparse Autoencoders Trained on the Same Data Learn Different Features", arXiv 2501.16615);
* fractions of features whose max cosine exceeds 0.7 and 0.9 (Paulo & Belrose's "shared features" use 0.7);
* **one-to-one matching**: the Hungarian assignment (``scipy.optimize.linear_sum_assignment``) maximising the
  summed cosine between the features of A and B; its mean matched cosine and the fractions of matched pairs
  above 0.7 and 0.9 (Paulo & Belrose, section 3).
"""

from __future__ import annotations

from itertools import combinations
from typing import Optional, Sequence

import torch


def _unit_decoder(d) -> torch.Tensor:
    W = d.W_dec.detach().float() if hasattr(d, "W_dec") else torch.as_tensor(d).float()
    if W.ndim != 2:
        raise ValueError(f"a decoder must be a 2-D [activation_dim, dict_size] tensor, got shape {tuple(W.shape)}")
    return W / W.norm(dim=0, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def max_cosine(W_a: torch.Tensor, W_b: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature max cosine similarity between two unit-norm decoders, in both directions, in chunks (memory
    ``chunk x dict_size``).

    Args:
        W_a: ``[activation_dim, F_a]``; W_b: ``[activation_dim, F_b]`` (unit-norm columns).

    Returns:
        ``(a_to_b [F_a], b_to_a [F_b])``.
    """
    W_b = W_b.to(W_a.device)
    a_to_b = torch.empty(W_a.shape[1], device=W_a.device)
    b_to_a = torch.full((W_b.shape[1],), -1.0, device=W_a.device)
    for s in range(0, W_a.shape[1], chunk):
        cos = W_a[:, s:s + chunk].T @ W_b  # [chunk, F_b]
        a_to_b[s:s + chunk] = cos.max(1).values
        b_to_a = torch.maximum(b_to_a, cos.max(0).values)
    return a_to_b, b_to_a


@torch.no_grad()
def hungarian_match(W_a: torch.Tensor, W_b: torch.Tensor) -> torch.Tensor:
    """Cosines of the one-to-one matching of features of A and B that maximises their sum (Hungarian algorithm).

    Returns:
        ``[min(F_a, F_b)]`` matched cosine similarities (CPU float tensor).
    """
    from scipy.optimize import linear_sum_assignment

    cos = (W_a.T @ W_b.to(W_a.device)).cpu().double().numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return torch.from_numpy(cos[rows, cols]).float()


def stability(dictionaries: Sequence, hungarian: Optional[bool] = None, hungarian_max_size: int = 8192) -> dict:
    """Cross-seed stability of two or more dictionaries trained on the same data with different seeds.

    Args:
        dictionaries: dictionaries (anything with ``W_dec [activation_dim, dict_size]``) or decoder tensors.
        hungarian: compute the one-to-one matching too (default: when every ``dict_size <= hungarian_max_size``;
            the algorithm is cubic in ``dict_size``).
        hungarian_max_size: see ``hungarian``.

    Returns:
        dict with ``n_runs``, ``mcs`` (mean max cosine similarity, both directions, all pairs),
        ``frac_above_0.7``, ``frac_above_0.9``, ``per_feature_max_cos`` (one list per run: each feature's max
        cosine to the other runs, averaged over them), ``pairwise_mcs`` (``[n_runs][n_runs]`` matrix, diagonal
        1), and, with the matching, ``hungarian_mean_cos``, ``hungarian_frac_above_0.7``,
        ``hungarian_frac_above_0.9`` (averaged over unordered pairs), else those keys are None.

    Raises:
        ValueError: fewer than two dictionaries, or decoders with different ``activation_dim``.
    """
    if len(dictionaries) < 2:
        raise ValueError(f"stability needs at least two dictionaries, got {len(dictionaries)}")
    Ws = [_unit_decoder(d) for d in dictionaries]
    dims = {W.shape[0] for W in Ws}
    if len(dims) > 1:
        raise ValueError(f"dictionaries have different activation_dim {sorted(dims)}: they were not trained on "
                         f"the same activations")
    n = len(Ws)
    per_run = [torch.zeros(W.shape[1], device=W.device) for W in Ws]
    pairwise = [[1.0] * n for _ in range(n)]
    for i, j in combinations(range(n), 2):
        a_to_b, b_to_a = max_cosine(Ws[i], Ws[j])
        per_run[i] += a_to_b / (n - 1)
        per_run[j] += b_to_a.to(per_run[j].device) / (n - 1)
        pairwise[i][j], pairwise[j][i] = float(a_to_b.mean()), float(b_to_a.mean())
    all_feats = torch.cat([p.cpu() for p in per_run])
    out = {
        "n_runs": n,
        "mcs": float(all_feats.mean()),
        "frac_above_0.7": float((all_feats > 0.7).float().mean()),
        "frac_above_0.9": float((all_feats > 0.9).float().mean()),
        "per_feature_max_cos": [p.cpu().tolist() for p in per_run],
        "pairwise_mcs": pairwise,
        "hungarian_mean_cos": None,
        "hungarian_frac_above_0.7": None,
        "hungarian_frac_above_0.9": None,
    }
    if hungarian is None:
        hungarian = max(W.shape[1] for W in Ws) <= hungarian_max_size
    if hungarian:
        matched = [hungarian_match(Ws[i], Ws[j]) for i, j in combinations(range(n), 2)]
        out["hungarian_mean_cos"] = sum(float(m.mean()) for m in matched) / len(matched)
        out["hungarian_frac_above_0.7"] = sum(float((m > 0.7).float().mean()) for m in matched) / len(matched)
        out["hungarian_frac_above_0.9"] = sum(float((m > 0.9).float().mean()) for m in matched) / len(matched)
    return out
