"""Initial parameters, drawn once in NumPy, and the MADE masks of the IAF.

Every backend loads these arrays, so all of them start from the same point. The rule is
PyTorch's nn.Linear default: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

Canonical names (dense kernels are (in, out); see README.md):
  encoder.l{0,1,2}.{kernel,bias}   784 -> H -> H -> 2L (mean-field) | 3L (IAF: loc, scale_arg, context)
  decoder.l{0,1,2}.{kernel,bias}   L -> H -> H -> 784
  flow.{t}.l0.{kernel,bias,context}  MADE layer 1: z (L) -> H, masked; context (L, H), no bias
  flow.{t}.l1.{kernel,bias,context}  MADE layer 2: H -> H, masked; context (L, H), no bias
  flow.{t}.out.{kernel,bias}         MADE output: H -> 2L = [m | s], masked, zero at init
"""

from __future__ import annotations

import numpy as np

from common.spec import N_PIXELS, Spec


def layer_shapes(spec: Spec) -> list[tuple[str, int, int, bool]]:
    """(layer name, fan_in, fan_out, has_bias) in the canonical drawing order."""
    H, L = spec.hidden_size, spec.latent_size
    layers = [("encoder.l0", N_PIXELS, H, True), ("encoder.l1", H, H, True),
              ("encoder.l2", H, spec.encoder_out, True),
              ("decoder.l0", L, H, True), ("decoder.l1", H, H, True), ("decoder.l2", H, N_PIXELS, True)]
    if spec.variational == "iaf":
        for t in range(spec.flow_steps):
            layers += [(f"flow.{t}.l0", L, H, True), (f"flow.{t}.l0.context", L, H, False),
                       (f"flow.{t}.l1", H, H, True), (f"flow.{t}.l1.context", L, H, False),
                       (f"flow.{t}.out", H, 2 * L, True)]
    return layers


def param_shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, fan_in, fan_out, has_bias in layer_shapes(spec):
        if layer.endswith(".context"):
            shapes[layer] = (fan_in, fan_out)
            continue
        shapes[f"{layer}.kernel"] = (fan_in, fan_out)
        if has_bias:
            shapes[f"{layer}.bias"] = (fan_out,)
    return shapes


def made_degrees(latent_size: int, hidden_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Input degrees 1..L left to right; hidden degrees spread evenly over 1..L-1 (MADE's "equal")."""
    inputs = np.arange(1, latent_size + 1)
    span = max(latent_size - 1, 1)
    hidden = 1 + (np.arange(hidden_size) * span) // hidden_size
    return inputs, hidden


def made_masks(spec: Spec) -> dict[str, np.ndarray]:
    """0/1 masks keyed by the kernel they multiply; output i (of m and of s) sees only z_<i."""
    if spec.variational != "iaf":
        return {}
    inputs, hidden = made_degrees(spec.latent_size, spec.hidden_size)
    m_in = (hidden[None, :] >= inputs[:, None]).astype(np.float64)      # (L, H)
    m_hid = (hidden[None, :] >= hidden[:, None]).astype(np.float64)     # (H, H)
    m_out = (inputs[None, :] > hidden[:, None]).astype(np.float64)      # (H, L)
    m_out = np.concatenate([m_out, m_out], axis=1)                      # (H, 2L): [m | s]
    masks = {}
    for t in range(spec.flow_steps):
        masks[f"flow.{t}.l0.kernel"] = m_in
        masks[f"flow.{t}.l1.kernel"] = m_hid
        masks[f"flow.{t}.out.kernel"] = m_out
    return masks


def init_params(spec: Spec, seed: int | None = None) -> dict[str, np.ndarray]:
    """float64 arrays; a backend casts them to its dtype. Masked kernel entries are stored as 0."""
    rng = np.random.default_rng(spec.seed if seed is None else seed)
    params: dict[str, np.ndarray] = {}
    for layer, fan_in, fan_out, has_bias in layer_shapes(spec):
        bound = 1.0 / np.sqrt(fan_in)
        kernel_name = layer if layer.endswith(".context") else f"{layer}.kernel"
        params[kernel_name] = rng.uniform(-bound, bound, size=(fan_in, fan_out))
        if has_bias:
            params[f"{layer}.bias"] = rng.uniform(-bound, bound, size=(fan_out,))
        if layer.startswith("flow.") and layer.endswith(".out"):
            # zero output layer: sigma = sigmoid(2) and m = 0 at the start, the flow near identity
            params[kernel_name][:] = 0.0
            params[f"{layer}.bias"][:] = 0.0
    for name, mask in made_masks(spec).items():
        params[name] = params[name] * mask
    return params


def check_params(spec: Spec, params: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming the first tensor that does not fit this spec."""
    expected = param_shapes(spec)
    for name, shape in expected.items():  # a wrong size says most, so it comes first
        if name in params and tuple(params[name].shape) != shape:
            raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, the spec needs {shape}")
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing:
        raise ValueError(f"parameter {missing[0]} is missing (spec: {spec.variational}, "
                         f"H={spec.hidden_size}, L={spec.latent_size})")
    if extra:
        raise ValueError(f"parameter {extra[0]} is not part of a {spec.variational} model "
                         f"with {spec.flow_steps} flow steps")
