"""A tiny two-architecture reproduction for tests/test_reproduce.py: run alone (one process) or under
``torchrun --nproc_per_node 2`` (the grid spread over two processes); ``python tests/spread_job.py STORE CACHE``.
A second experiment, its ReLU runs recorded also after 4 of the 8 steps, shares their training (``also``)."""
import sys

from dictionary_learning_aligned.experiments import EXPERIMENTS, Experiment
from dictionary_learning_aligned.reproduce import run_experiment

EXPERIMENTS["tinyspread"] = Experiment("tinyspread", figures=(), archs=("relu", "topk"),
                                       sparsity={"relu": (0.04,), "topk": (8,)}, seeds=2, dict_sizes=(128,),
                                       tokens={"smoke": 1024, "small": 1024, "paper": 1024})
EXPERIMENTS["tinysteps"] = Experiment("tinysteps", figures=(), archs=("relu",), sparsity={"relu": (0.04,)}, seeds=2,
                                      dict_sizes=(128,), tokens={"smoke": 1024, "small": 1024, "paper": 1024},
                                      eval_steps={"small": (4,)})

if __name__ == "__main__":
    run_experiment("tinyspread", "small", sys.argv[1], device="cpu", batch_size=128, eval_batches=1, ce_batches=1,
                   ce_batch_size=2, cache=sys.argv[2], also=["tinysteps"])
