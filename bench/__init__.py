"""Benchmarks: slow, noisy measurements printed as ratios against a same-run baseline."""
