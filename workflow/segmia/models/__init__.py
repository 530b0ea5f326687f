"""Segmentation models: architecture registry, losses, metrics, training and its variants."""
