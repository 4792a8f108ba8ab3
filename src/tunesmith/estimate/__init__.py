"""Cost estimates from a model and a batch shape: pure arithmetic after one recorded forward pass."""
