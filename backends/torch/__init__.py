"""The PyTorch backend: the VAE as nn.Modules that read like the math (vae.py), torch.optim's own
RMSprop(centered=True), Adam and Adagrad with a compiled step that takes each step's learning rate
(optim.py), DistributedDataParallel under torchrun for spec.devices > 1 (distributed.py), and the
Backend that ties them to the contract (engine.py)."""
