"""Multi-source classifier-free guidance (Sec. 2.1.2).

Training drops each conditioning source independently (`drop_conditions`), so that at sampling time the
model can be asked for p(t), p(t | c_a) and p(t | c_i). `guided_logprobs` combines them with eq. 3; eq. 2
is its one-source case, with the combined condition c = (c_a, c_i). At sampling time `guidance_branches`
stacks the conditions of every branch a guidance mode needs into one batch, and `combine_branches` applies
the mode's equation to the batch's logits.

Timing guidance (`timing_guided`, ours, not the paper's; off by default) adds one branch whose context is rolled
in time (by half its length unless asked otherwise): the same sounds, so the same key and instruments, with its
chords at the wrong times. Contrasting the prediction with the context against that rolled context strengthens
only what depends on *when* the context's chords fall.
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


def timing_guided(guided: torch.Tensor, cond: torch.Tensor, shifted: torch.Tensor, scale: float) -> torch.Tensor:
    """Timing guidance (ours): guided + lambda_t (log p(t | c_a) - log p(t | c_a shifted in time)), renormalised.

    Args:
        guided: log-probabilities [..., V] of eq. 2 / eq. 3.
        cond: logits [..., V] of the branch with the context in place (p(t | c_a) for eq. 3, p(t | c) for eq. 2).
        shifted: logits [..., V] of the same branch with the context rolled in time (shifted_in_time).
        scale: lambda_t; 0 returns `guided`.
    Returns:
        normalised log-probabilities [..., V] (in float32). The two added terms' weights sum to 0, so a model
        whose prediction does not depend on when the context's sounds fall is left as eq. 2 / eq. 3 made it.
    """
    contrast = torch.log_softmax(cond.float(), dim=-1) - torch.log_softmax(shifted.float(), dim=-1)
    return torch.log_softmax(guided.float() + scale * contrast, dim=-1)


def shifted_in_time(context: torch.Tensor, fraction: float = 0.5) -> torch.Tensor:
    """Context tokens [..., T] rolled in time by `fraction` of their length (at least one frame): the negative
    branch of timing guidance."""
    return torch.roll(context, shifts=max(1, round(fraction * context.shape[-1])), dims=-1)


# The forward branches of each guidance mode, in batch order: (instrument kept, context kept).
BRANCHES = {
    "none": [(True, True)],                                   # p(t | c_a, c_i): one pass, no guidance
    "joint": [(False, False), (True, True)],                  # eq. 2: p(t), p(t | c) with c = (c_a, c_i)
    "multi": [(False, False), (False, True), (True, False)],  # eq. 3: p(t), p(t | c_a), p(t | c_i)
}
GUIDANCE_MODES = tuple(BRANCHES)


def timing_partner(guidance: str) -> int:
    """The branch timing guidance contrasts: the mode's first with the context kept (p(t | c_a) for eq. 3,
    p(t | c) for eq. 2, the one pass without guidance)."""
    return next(i for i, (_, ctx_kept) in enumerate(BRANCHES[guidance]) if ctx_kept)


def guidance_branches(guidance: str, null_instrument: int, instrument: torch.Tensor, timing: bool = False):
    """The conditions of every forward branch a guidance mode needs, stacked for one batch (Sec. 2.1.2).

    Returns instrument ids [k*B] and context_dropped [k*B] for the k branches, in the order of BRANCHES:
    p(t | c_a, c_i) for "none"; p(t), p(t | c) for "joint"; p(t), p(t | c_a), p(t | c_i) for "multi". With
    `timing`, one more branch last: the conditions of timing_partner's branch, whose context the caller shifts
    in time (shifted_in_time).
    """
    if guidance not in BRANCHES:
        raise ValueError(f"unknown guidance mode {guidance!r}; choose from {GUIDANCE_MODES}")
    null = torch.full_like(instrument, null_instrument)
    keep = torch.zeros(instrument.shape[0], dtype=torch.bool, device=instrument.device)
    branches = BRANCHES[guidance] + ([BRANCHES[guidance][timing_partner(guidance)]] if timing else [])
    instruments = [instrument if inst_kept else null for inst_kept, _ in branches]
    dropped = [keep if ctx_kept else ~keep for _, ctx_kept in branches]
    return torch.cat(instruments), torch.cat(dropped)


def combine_branches(guidance: str, logits: torch.Tensor, scale_audio: float, scale_instrument: float,
                     scale_timing: float = 0.0):
    """The guided log-probabilities [B, T, V] from the logits [k*B, T, V] of guidance_branches' batch.

    "none": the one pass, normalised; "joint": eq. 2 with lambda = scale_audio; "multi": eq. 3 with
    lambda_a = scale_audio and lambda_i = scale_instrument. With scale_timing above 0 (the batch then holds the
    shifted branch last, as guidance_branches(..., timing=True) stacks it), timing guidance on top (timing_guided).
    """
    k = len(BRANCHES[guidance])
    timing = scale_timing > 0
    parts = logits.float().chunk(k + timing)                  # k (+1) x [B, T, V]
    if guidance == "none":
        out = torch.log_softmax(parts[0], dim=-1)
    elif guidance == "joint":
        out = guided_logprobs(parts[0], [parts[1]], [scale_audio])                          # eq. 2
    else:
        out = guided_logprobs(parts[0], [parts[1], parts[2]], [scale_audio, scale_instrument])  # eq. 3
    return timing_guided(out, parts[timing_partner(guidance)], parts[k], scale_timing) if timing else out
