"""Level-wise SoundStorm masking of the target-stem tokens and the training objective (Sec. 2.1, Fig. 4).

Per example a level q is chosen; levels below q (coarser) are given as they are, a cosine-scheduled
fraction of the positions of level q is masked, and every level above q (finer residuals) is fully masked.
The loss is taken over the masked positions of level q only. Context tokens are never masked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from guidance import drop_conditions


@dataclass
class Objective:
    """The training objective's knobs; defaults are the paper's (Sec. 2.1, 2.1.2, 3)."""
    p_drop_context: float = field(default=0.2, metadata={"help": "probability of dropping the context-mix (Sec. 2.1.2)"})
    p_drop_instrument: float = field(default=0.2, metadata={"help": "probability of dropping the instrument (Sec. 2.1.2)"})
    prefix_prob: float = field(default=0.1, metadata={
        "help": "probability of an unmasked target prefix, so that the model learns to continue a window (ours)"})
    max_prefix: float = field(default=0.9, metadata={"help": "longest unmasked prefix, as a fraction of the crop"})
    coarse_prob: float | None = field(default=None, metadata={
        "help": "probability of training level 0 (the rest share the finer levels); unset: uniform, as the paper"})
    shift_weight: float = field(default=0.0, metadata={
        "help": "weight of the timing term: the target must be likelier with its context than with the context "
                "shifted in time (ours; 0: the paper's loss alone)"})
    shift_margin: float = field(default=0.5, metadata={
        "help": "timing term: how many nats likelier, per example, before the term stops pushing"})
    shift_min: float = field(default=0.3, metadata={
        "help": "timing term: the shortest roll of the context, as a fraction of the crop"})
    shift_max: float = field(default=0.7, metadata={
        "help": "timing term: the longest roll of the context, as a fraction of the crop"})
    harmony_weight: float = field(default=0.0, metadata={
        "help": "weight of the harmony term: the target must be likelier with its context than with the same "
                "context whose chords are moved to other keys, beat by beat, its rhythm kept (ours; 0: off; "
                "needs a token pool and the spectral codec)"})
    harmony_margin: float = field(default=0.5, metadata={
        "help": "harmony term: how many nats likelier, per example, before the term stops pushing"})
    harmony_segment: float = field(default=0.5, metadata={
        "help": "harmony term: seconds of context moved to one key (about a beat); half the segments are moved"})

    def check(self) -> None:
        """Raise ValueError for a knob out of range."""
        probs = (self.p_drop_context, self.p_drop_instrument, self.prefix_prob,
                 0.0 if self.coarse_prob is None else self.coarse_prob)
        if not all(0 <= p <= 1 for p in probs) or not 0 <= self.max_prefix < 1:
            raise ValueError("the drop, prefix and coarse-level probabilities must lie in [0, 1] and "
                             "--max-prefix in [0, 1)")
        if not (math.isfinite(self.shift_weight) and self.shift_weight >= 0 and math.isfinite(self.shift_margin)
                and self.shift_margin >= 0):
            raise ValueError("--shift-weight and --shift-margin must be finite and >= 0")
        if not 0 < self.shift_min <= self.shift_max < 1:
            raise ValueError("--shift-min and --shift-max are fractions of the crop: 0 < min <= max < 1")
        if not (math.isfinite(self.harmony_weight) and self.harmony_weight >= 0 and math.isfinite(self.harmony_margin)
                and self.harmony_margin >= 0 and math.isfinite(self.harmony_segment) and self.harmony_segment > 0):
            raise ValueError("--harmony-weight and --harmony-margin must be finite and >= 0, --harmony-segment > 0")


def cosine_mask_fraction(u: torch.Tensor) -> torch.Tensor:
    """Fraction of positions left masked at schedule time u in [0, 1]: cos(pi/2 * u) (MaskGIT/SoundStorm)."""
    return torch.cos(0.5 * math.pi * u)


def sample_levels(batch: int, n_q: int, coarse_prob: float | None = None, generator: torch.Generator | None = None,
                  device=None) -> torch.Tensor:
    """The level q each example trains (Sec. 2.1): uniform over the n_q levels.

    With coarse_prob (a demo setting, not the paper's), level 0 is drawn with that probability and the
    finer levels share the rest equally: level 0 is where generation starts and where listening shows.
    """
    if coarse_prob is None or n_q == 1:
        return torch.randint(0, n_q, (batch,), device=device, generator=generator)
    probs = torch.full((n_q,), (1.0 - coarse_prob) / (n_q - 1), device=device)
    probs[0] = coarse_prob
    return torch.multinomial(probs, batch, replacement=True, generator=generator)


def mask_target(tokens: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
                prefix_prob: float = 0.0, max_prefix: float = 0.5, level: torch.Tensor | None = None,
                coarse_prob: float | None = None):
    """Mask target tokens for one training step (Sec. 2.1, Fig. 4).

    Args:
        tokens: LongTensor [B, Q, T] target-stem tokens.
        mask_id: the MASK token id (= bins).
        generator: source of every random draw.
        prefix_prob: probability that an example keeps a random prefix (up to `max_prefix` of T) of every
            level unmasked, as a SoundStorm prompt; teaches the model to continue a stem across windows.
        level: LongTensor [B], the level each example trains; drawn with `sample_levels` when None.
        coarse_prob: see `sample_levels`.
    Returns:
        masked: LongTensor [B, Q, T] with MASK where hidden.
        loss_mask: BoolTensor [B, Q, T], True at the masked positions of the level being trained.
        level: LongTensor [B], the level q of each example.
    """
    B, Q, T = tokens.shape
    dev = tokens.device
    if level is None:
        level = sample_levels(B, Q, coarse_prob, generator, dev)                          # q per example
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
    return masked, loss_mask, level


def masked_loss(model, context: torch.Tensor, target: torch.Tensor, instrument: torch.Tensor, objective: Objective,
                null_instrument: int, generator: torch.Generator | None = None,
                negative: torch.Tensor | None = None) -> torch.Tensor:
    """The training objective (Sec. 2.1, 2.1.2, 3): drop conditions, mask the target, cross-entropy at level q.

    Args:
        model: StemGen (or a wrapper) called as model(context, masked, instrument, context_dropped, level=q).
        context, target: LongTensor [B, Q, T] tokens; instrument: LongTensor [B].
        negative: LongTensor [B, Q, T], each context with its chords moved (harmony_plan); only for the
            harmony term.
    Returns:
        the mean cross-entropy over the masked positions of each example's level q (a scalar), plus the
        timing and harmony terms where their weights are above 0 (ours).
    """
    o = objective
    if o.harmony_weight > 0 and negative is None:
        raise ValueError("the harmony term needs each pair's negative context (training/pool.py builds it for a "
                         "token pool)")
    instrument, ctx_dropped = drop_conditions(instrument, null_instrument, o.p_drop_context, o.p_drop_instrument,
                                              generator)
    mask_id = (model.module.cfg if hasattr(model, "module") else model.cfg).mask_id
    masked, loss_mask, level = mask_target(target, mask_id, generator, o.prefix_prob, o.max_prefix,
                                           coarse_prob=o.coarse_prob)
    logits = model(context, masked, instrument, ctx_dropped, level=level)               # [B, T, V]
    at_level = loss_mask[torch.arange(len(level), device=level.device), level]          # [B, T]
    loss = F.cross_entropy(logits[at_level].float(), target[loss_mask])
    if o.shift_weight == 0 and o.harmony_weight == 0:                                    # the paper's objective
        return loss
    own = example_nll(logits, target, loss_mask, level)

    def gain(other: torch.Tensor) -> torch.Tensor:   # [B] nats the target loses when its context is `other`
        return example_nll(model(other, masked, instrument, ctx_dropped, level=level), target, loss_mask, level) - own

    if o.shift_weight > 0:
        loss = loss + o.shift_weight * timing_term(gain(shift_in_time(context, generator, o.shift_min, o.shift_max)),
                                                   o.shift_margin)
    if o.harmony_weight > 0:
        loss = loss + o.harmony_weight * timing_term(gain(negative), o.harmony_margin)
    return loss


def harmony_plan(batch: int, frames: int, segment: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The harmony term's negative, as semitones per frame [B, T] (ours, not the paper's): each example's frames
    cut into segments of `segment` frames (from a random offset); half of them, and always at least one, moved by
    1-11 semitones (as -5..6), each by its own draw, the rest kept. Applied to the context's spectra
    (codec.encode_transposed), it keeps every onset where it was and puts the chords of the moved beats in
    other keys: a target that follows its context's chords beat by beat fits it worse."""
    offset = torch.randint(0, segment, (batch, 1), generator=generator)
    index = (torch.arange(frames)[None] + offset) // segment                             # [B, T] segment of each frame
    n_seg = int(index.max()) + 1
    moved = torch.rand(batch, n_seg, generator=generator) < 0.5
    moved[torch.arange(batch), index[:, frames // 2]] = True                            # at least the middle one
    k = torch.randint(1, 12, (batch, n_seg), generator=generator)
    semitones = torch.where(moved, torch.where(k > 6, k - 12, k), 0)
    return semitones.gather(1, index)


def shift_in_time(context: torch.Tensor, generator: torch.Generator | None = None, low: float = 0.3,
                  high: float = 0.7) -> torch.Tensor:
    """Each example's context rolled along time by a fraction of its length drawn from [low, high] (by default
    30-70 %: 1.5-3.5 s of a 5 s crop): the same sounds, its chords at the wrong times. The negative of the timing
    term (ours, not the paper's)."""
    B, _, T = context.shape
    dev = context.device
    frac = low + (high - low) * torch.rand(B, device=dev, generator=generator)
    shift = (T * frac).long().clamp_min(1)                                               # [B]
    index = (torch.arange(T, device=dev)[None] - shift[:, None]) % T                     # [B, T]
    return context.gather(2, index[:, None, :].expand_as(context))


def example_nll(logits: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor, level: torch.Tensor):
    """Each example's mean cross-entropy over its masked positions of level q: [B]."""
    rows = torch.arange(len(level), device=level.device)
    at_level = loss_mask[rows, level]                                                    # [B, T]
    ce = F.cross_entropy(logits.float().transpose(1, 2), target[rows, level], reduction="none")   # [B, T]
    return (ce * at_level).sum(1) / at_level.sum(1).clamp_min(1)


def timing_term(gain: torch.Tensor, margin: float) -> torch.Tensor:
    """mean_i max(0, margin - gain_i), gain_i = NLL_i(shifted context) - NLL_i(context): zero once every target
    is `margin` nats likelier with its own context's timing than with the shifted one; a model that ignores the
    context (or an example whose context was dropped) pays the whole margin, and gets no push from it."""
    return F.relu(margin - gain).mean()
