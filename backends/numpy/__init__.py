"""The NumPy float64 reference as a backend: the math written once, with hand-written gradients."""
