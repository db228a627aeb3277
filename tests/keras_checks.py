"""The checks of one Keras engine, run by tests/test_keras.py in a child process started with KERAS_BACKEND=<engine>
(Keras picks its engine once per process, so the three variants cannot share the pytest process):

    python tests/keras_checks.py ENGINE OUT.json

Each check is a test of test_parity.py or test_conformance.py called on keras[ENGINE], as the in-process backends run
them, or one of the Keras-only checks below; its outcome ("ok" or the failure) and time go to OUT.json. Importing
this module imports no framework: the parent reads CHECKS from it.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

# check -> (module, function, arguments between the backend's name and rng)
CHECKS: dict[str, tuple[str, str, tuple]] = {
    "gradients mean-field 1e-10": ("test_parity", "test_objective_and_gradients_match_reference_float64",
                                   ("mean-field",)),
    "gradients iaf 1e-10": ("test_parity", "test_objective_and_gradients_match_reference_float64", ("iaf",)),
    "gradients mean-field tanh-deep-iwae-k3 1e-10": (
        "test_parity", "test_objective_gradients_of_every_depth_activation_and_objective_match_reference",
        ("mean-field", "tanh-deep-iwae-k3")),
    "gradients iaf softplus-shallow-elbo-k2 1e-10": (
        "test_parity", "test_objective_gradients_of_every_depth_activation_and_objective_match_reference",
        ("iaf", "softplus-shallow-elbo-k2")),
    "gradients mean-field exp-scale-elbo 1e-10": (
        "test_parity", "test_objective_gradients_of_every_depth_activation_and_objective_match_reference",
        ("mean-field", "exp-scale-elbo")),
    "20 steps rmsprop iaf exp-scale-elbo 1e-8": ("test_parity", "test_training_matches_reference_float64",
                                                 ("iaf", "exp-scale-elbo")),
    "log w mean-field 1e-10": ("test_parity", "test_log_weights_match_reference_float64",
                               ("mean-field", "relu-elbo")),
    "log w iaf tanh-deep-iwae-k3 1e-10": ("test_parity", "test_log_weights_match_reference_float64",
                                          ("iaf", "tanh-deep-iwae-k3")),
    "20 steps rmsprop mean-field 1e-8": ("test_parity", "test_training_matches_reference_float64",
                                         ("mean-field", "relu-elbo")),
    "20 steps rmsprop iaf tanh-deep-iwae-k3 1e-8": ("test_parity", "test_training_matches_reference_float64",
                                                    ("iaf", "tanh-deep-iwae-k3")),
    "20 steps adam 1e-8": ("test_parity", "test_every_optimizer_and_schedule_matches_reference_float64", ("adam",)),
    "20 steps adam burda schedule 1e-8": ("test_parity",
                                          "test_every_optimizer_and_schedule_matches_reference_float64",
                                          ("adam-burda-schedule",)),
    "20 steps adam-burda (Burda et al.'s code) 1e-8": (
        "test_parity", "test_every_optimizer_and_schedule_matches_reference_float64", ("adam-burda-code",)),
    "20 steps adagrad 1e-8": ("test_parity", "test_every_optimizer_and_schedule_matches_reference_float64",
                              ("adagrad",)),
    "masked kernel entries get no gradient": ("test_parity", "test_masked_kernel_entries_get_no_gradient", ()),
    "float32 iaf": ("test_parity", "test_float32_matches_reference", ("iaf",)),
    "fast mode is the parity step, mean-field": ("test_parity", "test_fast_mode_is_the_parity_step_with_its_own_noise",
                                                 ("mean-field", "relu-elbo")),
    "fast mode is the parity step, iaf tanh-deep-iwae-k3": (
        "test_parity", "test_fast_mode_is_the_parity_step_with_its_own_noise", ("iaf", "tanh-deep-iwae-k3")),
    "contract": ("test_conformance", "test_backend_satisfies_the_contract", ()),
    "seeded evaluation leaves training alone": (
        "test_conformance", "test_seeded_log_weights_are_deterministic_and_leave_training_alone", ()),
    "training noise does not depend on the window": (
        "test_conformance", "test_training_noise_does_not_depend_on_how_steps_are_grouped", ()),
    "state round trip": ("test_conformance", "test_state_round_trip_continues_the_same_run", ("adam",)),
    "state round trip adam-burda": ("test_conformance", "test_state_round_trip_continues_the_same_run",
                                    ("adam-burda",)),
    "evaluation reduces log w once": ("test_conformance", "test_evaluation_reduces_log_weights_once_for_every_backend",
                                      ()),
    "stock keras optimizers are not torch's": ("keras_checks", "stock_keras_optimizers_are_not_torchs", ()),
    "other engines, bare keras and other models are refused": ("keras_checks", "refusals", ()),
}


def stock_keras_optimizers_are_not_torchs(name: str, rng) -> None:
    """20 steps of the same gradients (of a typical magnitude, 1e-4) through each optimizer: ours moves the variable
    as the reference does to 1e-8, Keras's own (optim.stock) by more than 1e-4 away from it."""
    import keras

    from backends.keras import optim as keras_optim
    from backends.numpy import optim
    from common.spec import Spec

    start, grads = rng.standard_normal(50), 1e-4 * rng.standard_normal((20, 50))
    for kind, lr in (("rmsprop", 1e-3), ("adam", 3e-3), ("adagrad", 0.02)):
        spec = Spec(dtype="float64", optimizer=kind, learning_rate=lr)
        params, state = {"w": start}, optim.init_state(spec, {"w": start})
        for g in grads:
            params = optim.update(spec, params, {"w": g}, state, lr)
        expected = params["w"] - start
        for make, agrees in ((keras_optim.create, True), (keras_optim.stock, False)):
            w = keras.Variable(start, dtype="float64", trainable=False)
            optimizer = make(spec)
            for g in grads:
                optimizer.apply([keras.ops.convert_to_tensor(g, "float64")], [w])
            moved = keras.ops.convert_to_numpy(w.value) - start
            difference = np.abs(moved - expected).max() / np.abs(expected).max()
            if agrees:
                assert difference <= 1e-8, f"{kind}: ours is {difference:.1e} from the reference"
            else:
                assert difference > 1e-4, f"stock {kind}: only {difference:.1e} from the reference"


def refusals(name: str, rng) -> None:
    """keras[other engine] in this process, keras without an engine, and another model family: one clear error each."""
    import backends
    from common.params import init_params
    from common.spec import Spec

    engine = backends.variant_of(name)
    for other in (v for v in backends.framework("keras").variants if v != engine):
        try:
            backends.create(f"keras[{other}]")
        except RuntimeError as e:
            assert f"with the {engine} engine" in str(e) and f"KERAS_BACKEND={other}" in str(e), str(e)
        else:
            raise AssertionError(f"keras[{other}] was created in a process whose Keras runs {engine}")
    try:
        backends.create("keras")
    except ValueError as e:
        assert "keras[jax], keras[torch] or keras[tensorflow]" in str(e), str(e)
    else:
        raise AssertionError("a bare keras backend was created")
    spec = Spec(model="fa", encoder=(), decoder=())
    try:
        backends.create(name).load(spec, init_params(spec), np.zeros((10, 3)))
    except ValueError as e:
        assert str(e).startswith("keras supports --model vae only"), str(e)
    else:
        raise AssertionError("keras loaded the factor-analysis model")


def main(engine: str, out: Path) -> None:
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]  # the tests' modules, and this checkout's packages
    name, results = f"keras[{engine}]", {}
    for check, (module, function, args) in CHECKS.items():
        start = time.perf_counter()
        try:
            getattr(importlib.import_module(module), function)(name, *args, np.random.default_rng(1234))
            outcome = "ok"
        except Exception:  # noqa: BLE001 -- every failure is reported, under its check's name
            outcome = traceback.format_exc(limit=-4)
        results[check] = dict(outcome=outcome, seconds=round(time.perf_counter() - start, 2))
        out.write_text(json.dumps(results, indent=1))  # as far as it got, should the process die
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
