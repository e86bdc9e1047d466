"""Multi-source classifier-free guidance (Sec. 2.1.2).

Training drops each conditioning source independently (`drop_conditions`), so that at sampling time the
model can be asked for p(t), p(t | c_a) and p(t | c_i). `guided_logprobs` combines them with eq. 3; eq. 2
is its one-source case, with the combined condition c = (c_a, c_i).
"""
from __future__ import annotations

import torch


def drop_conditions(instrument: torch.Tensor, null_instrument: int, p_context: float, p_instrument: float,
                    generator: torch.Generator | None = None):
    """Drop the context-mix and the instrument independently per example (Sec. 2.1.2, training).

    Args:
        instrument: LongTensor [B] instrument ids.
        null_instrument: the id of the null instrument entry.
        p_context, p_instrument: drop probabilities of each source.
    Returns:
        instrument: LongTensor [B], the null id where the instrument is dropped.
        context_dropped: BoolTensor [B], True where the context is dropped.
    """
    B = instrument.shape[0]
    u = torch.rand(2, B, device=instrument.device, generator=generator)
    context_dropped = u[0] < p_context
    instrument = torch.where(u[1] < p_instrument, torch.full_like(instrument, null_instrument), instrument)
    return instrument, context_dropped


def guided_logprobs(uncond: torch.Tensor, conds: list[torch.Tensor] | tuple[torch.Tensor, ...],
                    scales: list[float] | tuple[float, ...]) -> torch.Tensor:
    """Eq. 3: sum_i lambda_i log p(t|c_i) + (1 - sum_i lambda_i) log p(t), renormalised.

    Args:
        uncond: logits or log-probs [..., V] of p(t) (every source dropped).
        conds: one tensor [..., V] per source i, p(t | c_i).
        scales: the guidance scales lambda_i.
    Returns:
        normalised log-probabilities [..., V] (in float32).
    """
    if len(conds) != len(scales):
        raise ValueError(f"{len(conds)} conditional branches but {len(scales)} scales")
    out = (1.0 - sum(scales)) * torch.log_softmax(uncond.float(), dim=-1)
    for lam, cond in zip(scales, conds):
        out = out + lam * torch.log_softmax(cond.float(), dim=-1)
    return torch.log_softmax(out, dim=-1)
