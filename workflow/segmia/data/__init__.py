"""Datasets: synthetic generators, the uniform prepared format, and the split."""
