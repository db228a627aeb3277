"""Independent random streams, derived from (seed, purpose, index).

Training noise, validation noise and test noise never share a generator: each backend seeds its
training generator from seed_of(seed, "train") and draws every evaluation chunk's noise from a
seed derived from (seed, "valid" | "test", the step or chunk), statelessly. So no evaluation
setting (how many validation examples, how often, which K) can move the training trajectory,
and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

PURPOSES = ("train", "valid", "test", "bench", "figures")


def seed_of(seed: int, purpose: str, *index: int) -> int:
    """A 63-bit seed for (seed, purpose, *index); different arguments give unrelated streams."""
    return derive(int(seed), PURPOSES.index(purpose), *index)


def derive(*entropy: int) -> int:
    """A 63-bit seed from non-negative integers (a stream and a chunk index, say)."""
    state = np.random.SeedSequence(tuple(int(e) for e in entropy)).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))
