"""Metrics, baselines, novelty, the demo and the benchmark (experiments as modules in `experiments/`).

Kept free of imports, so light modules such as `igpg_hf.evaluation.settings` load without torch.
"""
