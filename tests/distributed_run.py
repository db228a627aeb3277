"""One backend on N devices, float64, fixed inputs: what tests/test_distributed.py compares across N.

    python tests/distributed_run.py BACKEND DEVICES OUT_DIR     # writes OUT_DIR/<family>.npz, both families

Started through runner.launch.command / environment (torchrun for torch), exactly as compare.py
starts a worker. Writes, from the main process only: the per-example objective and its gradient on one
batch, evaluation with given noise, 20 optimizer steps with given noise (parameters and optimizer state
after them), then 5 fast-mode steps and a seeded evaluation (the backend's own noise). The mean-field
run uses centered RMSprop and the ELBO; the IAF run Adam with a step schedule and the IWAE bound (k = 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import perturbed_params  # noqa: E402  (this script's folder is tests/)

import backends  # noqa: E402
from common import evaluation  # noqa: E402
from common.spec import Spec  # noqa: E402

# small but complete: every parameter of both families, a batch that splits across the devices,
# and an evaluation set (11 examples) that does not
SPEC = dict(encoder=(32, 32), decoder=(32, 32), latent_size=8, flow_steps=2, batch_size=16, dtype="float64", seed=3,
            learning_rate=3e-3)
FAMILY_SPEC = {"mean-field": dict(), "iaf": dict(optimizer="adam", lr_schedule="step", lr_decay=0.5,
                                                 lr_decay_every=7, objective="iwae", train_k=2)}
N_TRAIN, N_EVAL, EVAL_K, STEPS, FAST_STEPS = 64, 11, 5, 20, 5
FAST_EVAL_K = 400  # several chunks of common.evaluation in every backend (2048 or 4096 samples per call)


def run(backend_name: str, family: str, devices: int, out: Path) -> None:
    spec = Spec(variational=family, devices=devices, **SPEC, **FAMILY_SPEC[family])
    rng = np.random.default_rng(11)
    train_x = (rng.random((N_TRAIN, 784)) < 0.3).astype(np.uint8)
    backend = backends.create(backend_name)
    backend.load(spec, perturbed_params(spec, rng), train_x)  # non-zero flow outputs: every flow term has a gradient
    L, B, k = spec.latent_size, spec.batch_size, spec.train_k

    value, grads = backend.objective_and_grads(train_x[:B], rng.standard_normal((k, B, L)))
    eval_elbo, eval_log_px = evaluation.evaluate(backend, train_x[:N_EVAL], EVAL_K,
                                                 noise=rng.standard_normal((EVAL_K, N_EVAL, L)))
    indices = rng.integers(0, N_TRAIN, (STEPS, B))
    train_mean = backend.train(indices, rng.standard_normal((STEPS, k, B, L)))
    params, state = backend.params(), backend.optimizer_state()
    fast_mean = backend.train(rng.integers(0, N_TRAIN, (FAST_STEPS, B)))
    fast_elbo, fast_log_px = evaluation.evaluate(backend, train_x[:N_EVAL], FAST_EVAL_K, stream=7)
    fast_params = backend.params()

    if backend.is_main:
        arrays = dict(value=value, eval_elbo=eval_elbo, eval_log_px=eval_log_px, train_mean=train_mean,
                      fast_mean=fast_mean, fast_elbo=fast_elbo, fast_log_px=fast_log_px, step=state["step"])
        arrays |= {f"grad/{k}": v for k, v in grads.items()}
        arrays |= {f"param/{k}": v for k, v in params.items()}
        arrays |= {f"{slot}/{k}": v for slot, d in state.items() if slot != "step" for k, v in d.items()}
        arrays |= {f"fast_param/{k}": v for k, v in fast_params.items()}
        np.savez(out, **arrays)


if __name__ == "__main__":
    for family in ("mean-field", "iaf"):  # one process for both: a framework starts once per run
        run(sys.argv[1], family, int(sys.argv[2]), Path(sys.argv[3]) / f"{family}.npz")
