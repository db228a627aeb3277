"""Canonical parameters: shapes, the initial draw (once, in NumPy, from the seed) and the file format.

Every backend loads the arrays init_params draws, so all of them start from the same point, and
every backend's params.safetensors (float32, canonical names, dense kernels (in, out)) loads into
every other backend. Initialisation rules (spec.init):
  uniform  PyTorch's nn.Linear default: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  glorot   Glorot & Bengio (2010): weights ~ U(-sqrt(6/(fan_in+fan_out)), +...), biases 0
  glorot-logit  glorot, and the VAE decoder's output bias at the logit of the training images' mean pixel
           (clipped to [0.001, 0.999]), so that the untrained model already predicts each pixel's frequency:
           Burda et al.'s code; the one draw that reads the data
  burda-code  glorot-logit drawn as Burda et al.'s code draws it: every kernel from a generator started afresh
           at the seed, so that kernels of one shape start equal, and the VAE encoder's output kernel as their
           two heads (q's mean and scale, each fan_out L), equal to each other
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.models import family
from common.spec import Spec


def param_shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in family(spec).layers(spec):
        shapes[layer.kernel] = (layer.fan_in, layer.fan_out)
        if layer.bias:
            shapes[f"{layer.name}.bias"] = (layer.fan_out,)
    return shapes


def masks(spec: Spec) -> dict[str, np.ndarray]:
    """0/1 masks keyed by the kernel they multiply (autoregressive layers); every backend applies them."""
    return family(spec).masks(spec)


def init_params(spec: Spec, seed: int | None = None, train: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """float64 arrays; a backend casts them to its dtype. Masked kernel entries are stored as 0. train: the
    training images, which glorot-logit needs (ValueError without them)."""
    model = family(spec)
    seed = spec.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for layer in model.layers(spec):
        if spec.init == "burda-code":
            params |= burda_code_layer(spec, layer, seed)
        elif spec.init in ("glorot", "glorot-logit"):
            bound = np.sqrt(6.0 / (layer.fan_in + layer.fan_out))
            params[layer.kernel] = rng.uniform(-bound, bound, size=(layer.fan_in, layer.fan_out))
            if layer.bias:
                params[f"{layer.name}.bias"] = np.zeros(layer.fan_out)
        else:
            bound = 1.0 / np.sqrt(layer.fan_in)
            params[layer.kernel] = rng.uniform(-bound, bound, size=(layer.fan_in, layer.fan_out))
            if layer.bias:
                params[f"{layer.name}.bias"] = rng.uniform(-bound, bound, size=(layer.fan_out,))
        if model.zero_at_init(layer):
            params[layer.kernel][:] = 0.0
            params[f"{layer.name}.bias"][:] = 0.0
    for name, mask in model.masks(spec).items():
        params[name] = params[name] * mask
    if spec.init in ("glorot-logit", "burda-code"):
        if train is None:
            raise ValueError(f"init {spec.init} sets the output bias from the training images: pass them")
        mean = np.clip(np.mean(train, axis=0, dtype=np.float64), 0.001, 0.999)
        params[f"decoder.l{len(spec.decoder)}.bias"] = np.log(mean) - np.log1p(-mean)
    return params


def burda_code_layer(spec: Spec, layer, seed: int) -> dict[str, np.ndarray]:
    """One layer of init burda-code: Glorot's uniform kernel from np.random.default_rng(seed) started afresh,
    zero bias; the encoder's output layer [loc | scale_arg] as two such (fan_in, L) kernels side by side."""
    heads = 2 if layer.name == f"encoder.l{len(spec.encoder)}" else 1
    fan_out = layer.fan_out // heads
    bound = np.sqrt(6.0 / (layer.fan_in + fan_out))
    kernel = np.concatenate([np.random.default_rng(seed).uniform(-bound, bound, size=(layer.fan_in, fan_out))
                             for _ in range(heads)], axis=1)
    return {layer.kernel: kernel} | ({f"{layer.name}.bias": np.zeros(layer.fan_out)} if layer.bias else {})


def check_params(spec: Spec, params: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming the first tensor that does not fit this spec."""
    expected = param_shapes(spec)
    for name, shape in expected.items():  # a wrong size says most, so it comes first
        if name in params and tuple(params[name].shape) != shape:
            raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, the spec needs {shape}")
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing:
        raise ValueError(f"parameter {missing[0]} is missing (spec: {spec.variational}, encoder "
                         f"{list(spec.encoder)}, decoder {list(spec.decoder)}, L={spec.latent_size})")
    if extra:
        raise ValueError(f"parameter {extra[0]} is not part of a {spec.variational} model "
                         f"with {spec.flow_steps} flow steps and encoder {list(spec.encoder)}")


def save_params(path: Path, params: dict[str, np.ndarray]) -> None:
    """float32 safetensors, canonical names: the exchange format between backends."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}, str(path))


def load_params(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))
