"""Choosing among generated candidates with the user's labelled samples.

A prior that has memorized its training checkpoints answers a misread instruction with a working net of the wrong
task; no likelihood can tell, since the prior is confident either way. A few labelled samples of the user's data
can: each candidate is loaded and scored on them, and the best ones are kept. This is the reranking step of
text-to-image systems that sample many images and keep those a scorer prefers (DALL-E's CLIP reranking, Ramesh
et al. 2021), with accuracy on the user's samples as the scorer.

Without labelled samples the prior itself can still check a candidate against the tasks it could be confused
with: `condition_posterior` is the prior's Bayes posterior that a candidate was drawn under the instruction it
was asked for rather than under one of the nearest other known tasks' instructions (a generative classifier over
the known tasks, uniform prior over them). A net the prior would have produced just as readily for another task
scores low; one specific to the asked task scores near 1.

The samples that score are the ones the call conditions on (``dataset=``): the caller's own training data. A
benchmark that reports test accuracy of the kept nets must draw them from the training split (the registered
tasks' `igpg_hf.zoo.tasks.sample_support_set` does), so that selection never sees the test set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["condition_posterior", "rank_candidates", "support_accuracy"]


@torch.no_grad()
def support_accuracy(
    build: Callable[[], nn.Module],
    state_dicts: list[dict[str, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
) -> list[float]:
    """Top-1 accuracy in percent of each state dict on the labelled samples ``x`` (S, ...) / ``y`` (S,) int64.

    ``build()`` returns a fresh module the state dicts load into (strictly); it runs in eval mode on the CPU or
    wherever its parameters are. A state dict with non-finite floating-point weights scores NaN. ValueError if
    ``x`` and ``y`` differ in length or are empty, or if the samples do not fit the module (wrong shape).
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(
            f"need as many labels as samples (and at least one), got {len(x)} samples, {len(y)} labels"
        )
    module = build().eval()
    dev = next(module.parameters()).device
    out = []
    for sd in state_dicts:
        if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
            out.append(float("nan"))
            continue
        module.load_state_dict(sd, strict=True)
        hits = 0
        for i in range(0, len(x), batch_size):
            try:
                logits = module(x[i : i + batch_size].to(dev, next(module.parameters()).dtype))
            except RuntimeError as e:
                raise ValueError(
                    f"the labelled samples of shape {tuple(x.shape[1:])} do not fit the architecture: {e}"
                ) from e
            hits += int((logits.argmax(-1).cpu() == y[i : i + batch_size]).sum())
        out.append(100.0 * hits / len(y))
    return out


def rank_candidates(
    scores: list[float],
    log_likelihood: list[float],
    copies: list[bool] | None = None,
    exclude_copies: bool = False,
    preferred: list[bool] | None = None,
) -> list[int]:
    """Candidate indices, best first: highest score (NaN last), then ``preferred`` ones (e.g. drawn under the
    instruction itself rather than another known task's: where a few samples cannot tell two nets apart, the text
    decides), then highest likelihood, then drawing order; with ``exclude_copies`` copies of training checkpoints
    rank after every new candidate."""

    def key(i: int) -> tuple:
        s = scores[i]
        return (
            bool(exclude_copies and copies and copies[i]),
            s != s,  # NaN last
            -(s if s == s else 0.0),
            not (preferred[i] if preferred is not None else True),
            -log_likelihood[i],
            i,
        )

    return sorted(range(len(scores)), key=key)


def condition_posterior(log_likelihoods: torch.Tensor) -> torch.Tensor:
    """Posterior probability of condition 0 for each candidate, from its log-likelihoods under every condition.

    log_likelihoods: (K, C) total log-probabilities (nats) of K candidates under C conditions
    (`igpg_hf.sampling.score_weight_tokens`), column 0 the condition asked for. Returns (K,) float in [0, 1]:
    ``exp(l0 - logsumexp(l))``, the posterior under a uniform prior over the C conditions. ValueError for fewer
    than two conditions or non-finite values.
    """
    if log_likelihoods.dim() != 2 or log_likelihoods.shape[1] < 2:
        raise ValueError(
            f"need (candidates, conditions) log-likelihoods with at least 2 conditions, got "
            f"{tuple(log_likelihoods.shape)}"
        )
    if not bool(torch.isfinite(log_likelihoods).all()):
        raise ValueError("log-likelihoods must be finite")
    ll = log_likelihoods.double()
    return (ll[:, 0] - ll.logsumexp(1)).exp().float()
