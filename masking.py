"""Level-wise SoundStorm masking of the target-stem tokens (Sec. 2.1, Fig. 4).

Per example a level q is chosen; levels below q (coarser) are given as they are, a cosine-scheduled
fraction of the positions of level q is masked, and every level above q (finer residuals) is fully masked.
The loss is taken over the masked positions of level q only. Context tokens are never masked.
"""
from __future__ import annotations

import math

import torch


def cosine_mask_fraction(u: torch.Tensor) -> torch.Tensor:
    """Fraction of positions left masked at schedule time u in [0, 1]: cos(pi/2 * u) (MaskGIT/SoundStorm)."""
    return torch.cos(0.5 * math.pi * u)


def mask_target(tokens: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
                prefix_prob: float = 0.0, max_prefix: float = 0.5, level: torch.Tensor | None = None):
    """Mask target tokens for one training step (Sec. 2.1, Fig. 4).

    Args:
        tokens: LongTensor [B, Q, T] target-stem tokens.
        mask_id: the MASK token id (= bins).
        generator: source of every random draw.
        prefix_prob: probability that an example keeps a random prefix (up to `max_prefix` of T) of every
            level unmasked, as a SoundStorm prompt; teaches the model to continue a stem across windows.
    Returns:
        masked: LongTensor [B, Q, T] with MASK where hidden.
        loss_mask: BoolTensor [B, Q, T], True at the masked positions of the level being trained.
    """
    B, Q, T = tokens.shape
    dev = tokens.device
    if level is None:
        level = torch.randint(0, Q, (B,), device=dev, generator=generator)                # q per example
    frac = cosine_mask_fraction(torch.rand(B, device=dev, generator=generator))
    # Exactly max(1, round(frac * T)) positions of level q are masked: take the lowest random scores.
    n_mask = (frac * T).round().long().clamp(1, T)                                        # [B]
    scores = torch.rand(B, T, device=dev, generator=generator)
    prefix = torch.zeros(B, dtype=torch.long, device=dev)
    if prefix_prob > 0:
        use = torch.rand(B, device=dev, generator=generator) < prefix_prob
        length = (torch.rand(B, device=dev, generator=generator) * max_prefix * T).long().clamp(max=T - 1)
        prefix = torch.where(use, length, prefix)
        n_mask = torch.minimum(n_mask, T - prefix)
        # prefix positions get scores above any other so they are never among the masked ones
        scores = scores + (torch.arange(T, device=dev)[None] < prefix[:, None]).float() * 2.0
    rank = scores.argsort(dim=1).argsort(dim=1)                                           # [B, T]
    masked_at_q = rank < n_mask[:, None]                                                  # [B, T]

    levels = torch.arange(Q, device=dev)[None, :, None]                                   # [1, Q, 1]
    q = level[:, None, None]
    in_prefix = torch.arange(T, device=dev)[None, None, :] < prefix[:, None, None]        # [B, 1, T]
    above = (levels > q) & ~in_prefix                                                     # [B, Q, T]
    at_q = (levels == q) & masked_at_q[:, None, :]
    loss_mask = at_q
    masked = tokens.masked_fill(above | at_q, mask_id)
    return masked, loss_mask
