"""The TensorFlow backend: the VAE as a tf.Module of tf.Variables under canonical names (vae.py), differentiated
by tf.GradientTape; the optimizers written out with torch.optim's formulas (optim.py); a training window as one
XLA-compiled loop, with its noise drawn on the device by a tf.random.Generator (engine.py); and data parallelism
over N devices with tf.distribute's MirroredStrategy, or MultiWorkerMirroredStrategy across hosts (distributed.py).
"""
