"""The evaluation loop and the importance-sampling reduction, written once for every backend.

A backend computes the log-weights log w_k = log p(x, z_k) - log q(z_k | x) of one chunk of examples, and each
sample's ELBO (the same array, for every family but the GMVAE) (`log_weights`); this module walks the chunks,
draws nothing itself, and reduces in float64:
  ELBO(x)    = mean_k elbo_k
  log p(x) ~= logsumexp_k log w_k - log K
Each chunk's noise is seeded from (stream, chunk index), so a split's evaluation is a function of
the parameters, the examples and the stream alone.
"""

from __future__ import annotations

import numpy as np

from common import streams


def logmeanexp(log_w: np.ndarray, axis: int = 0) -> np.ndarray:
    peak = np.max(log_w, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.squeeze(peak, axis) + np.log(np.mean(np.exp(log_w - peak), axis=axis))


def chunk_examples(backend, k: int) -> int:
    """Examples per log_weights call, from the backend's preferred samples per call. Not from its device count:
    the chunks, hence their noise seeds, are the same on 1 and on N devices, so N devices evaluate exactly what
    one does (the backend pads a chunk that does not split evenly)."""
    return max(1, backend.eval_chunk_samples // k)


def evaluate(backend, x: np.ndarray, k: int, *, stream: int | None = None,
             noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-example ELBO and log p(x), (n,) float64 each. noise (K, n, ...) given: parity mode."""
    if (stream is None) == (noise is None):
        raise ValueError("evaluate needs exactly one of stream (the backend draws) and noise (given)")
    n = chunk_examples(backend, k)
    # filled in place: a small array kept from every chunk would sit in the heap between the chunks' large
    # temporaries (torch's CPU tensors come from malloc) and fragment it; measured, a torch worker's memory grew
    # by 190 MB/s through a test evaluation, to 23.5 GB and the kernel's OOM killer
    elbo, log_px = np.empty(len(x)), np.empty(len(x))
    for i, start in enumerate(range(0, len(x), n)):
        rows = slice(start, start + n)
        if noise is None:
            log_w, sample_elbo = backend.log_weights(x[rows], k, seed=streams.derive(stream, i))
        else:
            log_w, sample_elbo = backend.log_weights(x[rows], k, noise=noise[:, rows])
        elbo[rows] = np.asarray(sample_elbo, np.float64).mean(axis=0)
        log_px[rows] = logmeanexp(np.asarray(log_w, np.float64), axis=0)
    return elbo, log_px
