"""Green Trainer: train the most important tensors that fit a FLOPs budget (green_trainer.md)."""
