"""Evaluation: metrics, baselines, novelty, the demo, the benchmark and its report."""
