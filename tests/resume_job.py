"""A small deterministic training job for the kill-and-resume test: python -m tests.resume_job OUT RESUME STEPS."""
import sys

import torch

from dictionary_learning_aligned import AlignedTopKTrainer, PAnnealTrainer, StandardTrainer, trainSAE

COMMON = dict(activation_dim=32, dict_size=96, layer=0, lm_name="synthetic", device="cpu", warmup_steps=5)
CONFIGS = [
    # a strong L1 penalty kills features, so resampling (which draws from the global RNG) runs after the resume
    # step: this checks that RNG states are restored
    dict(trainer=StandardTrainer, steps=120, l1_penalty=2.0, sparsity_warmup_steps=10, resample_steps=10, seed=1,
         **COMMON),
    dict(trainer=PAnnealTrainer, steps=120, sparsity_warmup_steps=10, anneal_start=10, n_sparsity_updates=20,
         seed=2, **COMMON),
    dict(trainer=AlignedTopKTrainer, steps=120, k=8, threshold_start_step=10, seed=3, **COMMON),
]


def data(n=400):
    """Deterministic synthetic activations: sparse combinations of 64 directions."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, 32, generator=g)
    for _ in range(n):
        codes = torch.rand(128, 64, generator=g) * (torch.rand(128, 64, generator=g) < 0.1)
        yield codes @ dirs + 0.1


if __name__ == "__main__":
    out, resume, steps = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
    trainSAE(data(), CONFIGS, steps, save_dir=out, save_steps=list(range(steps)), normalize_activations=True,
             resume=resume, log_steps=10, device="cpu")
