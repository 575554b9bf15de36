"""Reproduce the paper's experiments: ``python -m dictionary_learning_aligned reproduce EXPERIMENT`` (or
``python -m dictionary_learning_aligned.reproduce``). The modules, one purpose each:

- :mod:`.run`: :func:`run_experiment`, the reproduction itself (parts trained, evaluated and recorded).
- :mod:`.selection`: which runs are trained (grids, filters, experiments sharing training, steps, processes).
- :mod:`.recording`: what a record of one dictionary (at one step point) holds.
- :mod:`.context`: what every part of one reproduction shares.
- :mod:`.command`: the command line (flags, ``-h``, ``main``).

This package hands on their public names, and the experiments' (:mod:`..experiments`).
"""

from ..experiments import EXPERIMENTS, RECIPES, SCALES, Plan, Run, resolve

from .command import ReproduceConfig, build_parser, compile_setting, experiments_help, main, run_config
from .recording import dictionary_dir, record_part
from .run import evaluate_part, run_experiment, train_part
from .selection import (SHARED_SETTINGS, check_grid_filters, runs_to_train, select_runs, select_shared_runs,
                        shared_plans, spread_runs, train_steps, trainer_config, training_key)
