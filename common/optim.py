"""What every backend's optimizer shares: the state's slot names and the learning rate of each step.

The updates themselves are written out once in backends/numpy/optim.py (the reference) and in each
framework's optim module; rmsprop, adam and adagrad follow PyTorch's torch.optim formulas (eps outside
the square root); adam-burda is the Adam of Burda et al.'s published code (its formula in
backends/numpy/optim.py), whose second moments start at one (INITIAL). The learning rate of every
step comes from learning_rates() here, so a schedule is the same in every backend; a backend counts
its steps (optimizer state "step") and asks for the rates of each window it trains.
"""

from __future__ import annotations

import numpy as np

from common.spec import Spec

SLOTS = {  # per optimizer, the per-parameter arrays of its state (torch.optim's names)
    "rmsprop": ("square_avg", "grad_avg"),  # centered: E[g^2], E[g]
    "adam": ("exp_avg", "exp_avg_sq"),
    "adagrad": ("sum",),
    "adam-burda": ("exp_avg", "exp_avg_sq"),
}
INITIAL = {("adam-burda", "exp_avg_sq"): 1.0}  # a slot's value before the first step, where it is not 0


def initial(optimizer: str, slot: str) -> float:
    """The value every element of this slot starts at."""
    return INITIAL.get((optimizer, slot), 0.0)


def burda_stage(epoch: np.ndarray) -> np.ndarray:
    """Stage i of Burda et al.'s schedule holds epochs [(3^i - 1) / 2, (3^(i+1) - 1) / 2): 3^i passes."""
    return np.floor(np.log(2 * np.asarray(epoch, np.float64) + 1) / np.log(3) + 1e-9).astype(np.int64)


def learning_rates(spec: Spec, start: int, stop: int, n_train: int) -> np.ndarray:
    """The learning rate of steps start..stop-1 (0-based), float64."""
    steps = np.arange(start, stop)
    if spec.lr_schedule == "step":
        return spec.learning_rate * spec.lr_decay ** (steps // spec.lr_decay_every)
    if spec.lr_schedule in ("burda", "burda-code"):
        epoch = steps // max(1, n_train // spec.batch_size)
        if spec.lr_schedule == "burda-code":  # 10^(-i/7) to two significant digits, as Burda et al.'s code has it
            return spec.learning_rate * np.round(10.0 ** (1 - burda_stage(epoch) / 7.0), 1) / 10
        return spec.learning_rate * 10.0 ** (-burda_stage(epoch) / 7.0)
    return np.full(len(steps), spec.learning_rate)
