"""The detector core: plain PyTorch/NumPy, no web or database imports (models, data,
training loop, decoding, metrics, export)."""
