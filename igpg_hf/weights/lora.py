"""LoRA factors in a canonical form: one representative of the many (A, B) pairs that make the same update.

A LoRA layer adds ``scale * B @ A`` to a frozen weight (A: r x fan_in, B: fan_out x r; a conv's A is
(r, in, kh, kw) and its B (out, r, 1, 1)). Any invertible r x r matrix M gives the same update with
``(B M, M^-1 A)``: the pair as stored carries an arbitrary scale, rotation and sign per adapter, and peft
initializes A at random, so two adapters of one task can have unrelated factors. `balance_lora_factors`
replaces every pair by the balanced SVD factors of its product,

    B @ A = U S V^T   ->   B' = U_r S_r^(1/2),   A' = S_r^(1/2) V_r^T,

ordered by singular value, with ``|A'|`` and ``|B'|`` equal per direction and each direction's sign fixed (the
largest-magnitude entry of each column of B' is positive). The update ``B' @ A'`` equals ``B @ A`` up to
floating point, so the balanced adapter loads and behaves like the stored one. Entries are paired by name:
``...lora_A...`` with the same name spelled ``lora_B`` (peft's saved keys, with or without an adapter name).
"""

from __future__ import annotations

import re

import torch

from .layout import WeightLayout

__all__ = ["FACTOR_FORMS", "lora_pairs", "balance_lora_factors", "balance_lora_vector"]

FACTOR_FORMS = ("stored", "balanced")
_A = re.compile(r"(^|\.)lora_A(\.|$)")


def lora_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(A name, B name) of every LoRA pair among entry names, in the order the A entries come."""
    present = set(names)
    pairs = []
    for n in names:
        if _A.search(n):
            b = _A.sub(lambda m: f"{m.group(1)}lora_B{m.group(2)}", n, count=1)
            if b in present:
                pairs.append((n, b))
    return pairs


def _balanced(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Balanced SVD factors of one pair with the stored shapes and dtypes, or None if the shapes are no LoRA pair."""
    r = a.shape[0]
    if a.ndim < 2 or b.ndim < 2 or b.shape[1] != r or any(s != 1 for s in b.shape[2:]):
        return None  # e.g. grouped convolutions: left as stored
    a2 = a.detach().double().reshape(r, -1)  # (r, fan_in)
    b2 = b.detach().double().reshape(b.shape[0], r)  # (fan_out, r)
    # SVD of the product through the small factors: B = Qb Rb, A^T = Qa Ra -> B A = Qb (Rb Ra^T) Qa^T
    qb, rb = torch.linalg.qr(b2)  # (fan_out, r'), (r', r)
    qa, ra = torch.linalg.qr(a2.T)  # (fan_in, r'), (r', r)
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # core of size r' x r' (r' = min(r, fan)); s descending
    u, vh = qb @ u, vh @ qa.T  # (fan_out, r'), (r', fan_in)
    k = s.shape[0]
    if k < r:  # fewer directions than the rank (a tiny layer): pad with zero directions
        u = torch.cat([u, u.new_zeros(u.shape[0], r - k)], 1)
        vh = torch.cat([vh, vh.new_zeros(r - k, vh.shape[1])], 0)
        s = torch.cat([s, s.new_zeros(r - k)])
    # one sign per direction: the largest-magnitude entry of each column of U is positive
    idx = u.abs().argmax(0)  # (r,)
    sign = torch.sign(u[idx, torch.arange(r)])
    sign[sign == 0] = 1
    root = s.sqrt()
    b_new = (u * sign) * root  # (fan_out, r)
    a_new = (vh * sign[:, None]) * root[:, None]  # (r, fan_in)
    return a_new.reshape(a.shape).to(a.dtype), b_new.reshape(b.shape).to(b.dtype)


def balance_lora_factors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with every LoRA (A, B) pair replaced by its balanced SVD factors (module doc).

    Entries that are not part of a pair (a ``modules_to_save`` head, biases) are returned as they are.
    """
    out = dict(state_dict)
    for a_name, b_name in lora_pairs(list(state_dict)):
        new = _balanced(state_dict[a_name], state_dict[b_name])
        if new is not None:
            out[a_name], out[b_name] = new
    return out


def balance_lora_vector(vector: torch.Tensor, layout: WeightLayout) -> torch.Tensor:
    """`balance_lora_factors` on a weight vector (D,) of ``layout`` (``layout.vectorize`` order)."""
    slices = {e.name: (e, s) for e, s in layout.entry_slices()}
    pairs = [(a, b) for a, b in lora_pairs(list(slices))]
    if not pairs:
        return vector
    out = vector.clone()
    for a_name, b_name in pairs:
        (ea, sa), (eb, sb) = slices[a_name], slices[b_name]
        new = _balanced(vector[sa].view(ea.shape), vector[sb].view(eb.shape))
        if new is not None:
            out[sa], out[sb] = new[0].reshape(-1), new[1].reshape(-1)
    return out
