"""The backend contract (backends/contract.py), held against every registered backend, present and future.

Shapes, dtypes and the behaviours the runner relies on: checkpointed state that resumes exactly,
seeded evaluation that is deterministic and never touches the training stream, and the one
reduction of log-weights (common/evaluation.py) giving ELBO <= log p(x).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS
from helpers import assert_close, binary, make

import backends
from common import evaluation
from common.optim import SLOTS
from common.params import init_params, param_shapes
from common.spec import Spec

SPEC = Spec(variational="iaf", encoder=(24, 16), decoder=(16, 24), latent_size=6, batch_size=8, dtype="float64",
            optimizer="adam", objective="iwae", train_k=2)


def loaded(name: str, rng, spec: Spec = SPEC):
    train_x = binary(rng, 40)
    return make(name, spec, init_params(spec), train_x), train_x


def windows(rng, count: int, steps: int = 3) -> list[np.ndarray]:
    return [rng.integers(0, 40, size=(steps, SPEC.batch_size)) for _ in range(count)]


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_satisfies_the_contract(name, rng):
    backend, _ = loaded(name, rng)
    assert isinstance(backend, backends.Backend)
    assert backend.name == name and backend.devices == 1 and backend.is_main
    assert backend.eval_chunk_samples >= 1
    assert set(backend.params()) == set(param_shapes(SPEC))
    assert all(backend.params()[k].shape == s and backend.params()[k].dtype == np.float64
               for k, s in param_shapes(SPEC).items())
    state = backend.optimizer_state()
    assert int(state["step"]) == 0 and set(state) == {"step", *SLOTS["adam"]}
    value = backend.train(windows(rng, 1)[0])
    assert isinstance(value, float) and np.isfinite(value)
    assert int(backend.optimizer_state()["step"]) == 3
    x = binary(rng, 5)
    log_w, elbo = (np.asarray(a) for a in backend.log_weights(x, 7, seed=11))
    assert log_w.shape == elbo.shape == (7, 5) and np.isfinite(log_w).all()
    np.testing.assert_array_equal(elbo, log_w)  # the VAE's ELBO of a sample is its log-weight
    value, grads = backend.objective_and_grads(x, np.zeros((SPEC.train_k, 5, SPEC.latent_size)))
    assert np.shape(value) == (5,) and set(grads) == set(param_shapes(SPEC))
    assert backend.matmul_flop_per_s(64, 64, 64, 0.05) > 0


@pytest.mark.parametrize("name", BACKENDS)
def test_seeded_log_weights_are_deterministic_and_leave_training_alone(name, rng):
    """Evaluation noise is drawn from the seed it is given, never from the training generator: training
    with evaluations in between ends exactly where training without them ends."""
    ws = windows(rng, 2)
    a, _ = loaded(name, np.random.default_rng(0))
    b, _ = loaded(name, np.random.default_rng(0))
    x = binary(rng, 9)
    a.train(ws[0])
    first = np.asarray(a.log_weights(x, 4, seed=5)[0])
    np.testing.assert_array_equal(np.asarray(a.log_weights(x, 4, seed=5)[0]), first)
    assert not np.allclose(np.asarray(a.log_weights(x, 4, seed=6)[0]), first)
    a.train(ws[1])
    b.train(ws[0])
    b.train(ws[1])
    for k, v in b.params().items():
        np.testing.assert_array_equal(a.params()[k], v, err_msg=k)


@pytest.mark.parametrize("name", BACKENDS)
def test_training_noise_does_not_depend_on_how_steps_are_grouped(name, rng):
    """Six steps as one train() call, or as calls of 2 and 4: the same noise, the same parameters (the runner's
    window follows --eval-every, which must not change what is trained)."""
    indices = rng.integers(0, 40, size=(6, SPEC.batch_size))
    whole, _ = loaded(name, np.random.default_rng(0))
    parts, _ = loaded(name, np.random.default_rng(0))
    np.testing.assert_array_equal(whole.preview_noise(6)[2:], (parts.train(indices[:2]), parts.preview_noise(4))[1])
    whole.train(indices)
    parts.train(indices[2:])
    for k, v in whole.params().items():
        assert_close(parts.params()[k], v, 1e-14, k)


@pytest.mark.parametrize("optimizer", ["adam", "adam-burda"])  # adam-burda: v starts at 1, not 0
@pytest.mark.parametrize("name", BACKENDS)
def test_state_round_trip_continues_the_same_run(name, optimizer, rng):
    """Parameters, optimizer state (with its step count) and the training generator's state are all a
    run needs: a fresh backend given them continues exactly as the original does."""
    ws, spec = windows(rng, 2), SPEC.replace(optimizer=optimizer)
    original, train_x = loaded(name, np.random.default_rng(0), spec)
    if optimizer == "adam-burda":
        assert all(np.all(v == 1) for v in original.optimizer_state()["exp_avg_sq"].values())
    original.train(ws[0])
    params, state, rng_state = original.params(), original.optimizer_state(), original.rng_state()
    copy = make(name, spec, params, train_x)
    copy.set_optimizer_state(state)
    copy.set_rng_state(rng_state)
    np.testing.assert_array_equal(copy.preview_noise(2), original.preview_noise(2))
    original.train(ws[1])
    copy.train(ws[1])
    for k, v in original.params().items():
        assert_close(copy.params()[k], v, 1e-14, k)


def test_evaluation_keeps_nothing_from_one_chunk_to_the_next():
    """common.evaluation writes each chunk's figures into arrays made once: an array kept per chunk would lie in the
    heap between the next chunks' large temporaries and fragment it (a torch worker grew to 23.5 GB that way).
    Traced by tracemalloc in NumPy's domain (its data buffers, which come from malloc): the buffers held when a
    chunk starts are as many at the 490th chunk as at the 10th."""
    import tracemalloc

    numpy_buffers = [tracemalloc.DomainFilter(True, 389047)]  # NumPy's tracemalloc domain (NPY_TRACE_DOMAIN)

    class Chunks:
        eval_chunk_samples = 40  # 4 examples of k = 10 per chunk
        calls, held = 0, {}

        def log_weights(self, x, k, seed=None, noise=None):
            Chunks.calls += 1
            if Chunks.calls in (10, 490):
                Chunks.held[Chunks.calls] = tracemalloc.take_snapshot().filter_traces(numpy_buffers)
            log_w = np.full((k, len(x)), -90.0, np.float32)
            return log_w, log_w

    tracemalloc.start()
    try:
        elbo, log_px = evaluation.evaluate(Chunks(), np.zeros((2000, 784), np.uint8), 10, stream=0)
    finally:
        tracemalloc.stop()
    assert Chunks.calls == 500 and np.allclose(log_px, -90.0) and np.allclose(elbo, -90.0)
    count = {c: len(snapshot.traces) for c, snapshot in Chunks.held.items()}
    assert count[490] == count[10], f"{count[490] - count[10]} more NumPy buffers held after 480 more chunks"


@pytest.mark.parametrize("name", BACKENDS)
def test_evaluation_reduces_log_weights_once_for_every_backend(name, rng):
    """common.evaluation chunks the examples as the backend prefers; with given noise it is the reference's
    reduction, and log p(x) >= ELBO example by example."""
    spec = SPEC.replace(objective="elbo", train_k=1)
    backend, _ = loaded(name, rng, spec)
    x = binary(rng, 23)
    noise = rng.standard_normal((10, 23, spec.latent_size))
    elbo, log_px = evaluation.evaluate(backend, x, 10, noise=noise)
    log_w = np.asarray(backend.log_weights(x, 10, noise=noise)[0], np.float64)
    assert_close(elbo, log_w.mean(0), 1e-13, "ELBO")
    assert_close(log_px, np.log(np.mean(np.exp(log_w), 0)), 1e-12, "log p(x)")
    drawn = evaluation.evaluate(backend, x, 10, stream=3)
    assert np.all(drawn[1] >= drawn[0]) and not np.allclose(drawn[1], log_px)
    np.testing.assert_array_equal(evaluation.evaluate(backend, x, 10, stream=3)[1], drawn[1])
