"""The JAX backend: the VAE as flax.linen modules whose parameter paths, joined with ".", are the canonical
names (vae.py); the optimizers as optax transformations giving each step's direction, checked against torch.optim's
formulas, with the step's learning rate applied as an input (optim.py); a training window as one jitted lax.scan
with donated buffers, its noise drawn on the device by jax.random (engine.py); and data parallelism over N devices
as the same functions jitted over a NamedSharding mesh, or across hosts with jax.distributed (distributed.py).
"""
