"""Keras 3: the VAE written once in keras.layers / keras.ops, run on the engine its variant names (keras[jax],
keras[torch], keras[tensorflow]); engine.py says how each engine compiles it."""
