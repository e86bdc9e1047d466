"""Causally-biased iterative decoding, level by level (Sec. 2.1.1, Sec. 3.2.1).

For each RVQ level, coarsest first, the level starts fully masked. At each of its S steps the model
predicts every position; a candidate token is sampled for each masked position from the guided
distribution (eq. 2 / eq. 3, guidance.py); candidates are ranked with eq. 1 and the top-ranked ones are
fixed for good, so that after step s only floor(M cos(pi/2 (s+1)/S)) of the M initially masked positions
stay masked. The next level starts once a level is complete.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from guidance import guided_logprobs
from model import autocast

GUIDANCE_MODES = ("none", "joint", "multi")


@dataclass
class Sampling:
    """Sampling knobs with the paper's values as defaults (Sec. 2.1.1, 2.1.2, 3.2.1)."""
    steps: tuple[int, ...] = (128, 64, 32, 32)  # decoding steps per RVQ level, coarsest first
    w_c: float = 0.1              # eq. 1 weight of the model's confidence
    w_s: float = 0.1              # eq. 1 weight of the causal bias (1 - n/N)
    w_r: float = 1.0              # eq. 1 weight of the uniform noise X
    guidance: str = "multi"       # "multi" (eq. 3), "joint" (eq. 2) or "none"
    scale_audio: float = 3.0      # lambda_a: guidance scale of the context-mix (eq. 3), lambda of eq. 2
    scale_instrument: float = 3.0  # lambda_i: guidance scale of the instrument (eq. 3)
    temperature: float = 1.0      # softmax temperature of the sampled candidates

    @classmethod
    def naive(cls, **overrides) -> "Sampling":
        """The paper's naive setting (Sec. 3.2, Tab. 3): no classifier-free guidance and no causal bias."""
        return replace(cls(guidance="none", w_s=0.0), **overrides)


def cosine_schedule(n_masked: int, steps: int) -> list[int]:
    """Positions still masked after each step: floor(M * cos(pi/2 * (s+1)/S)), ending at 0 (Sec. 2.1.1)."""
    left = [math.floor(n_masked * math.cos(0.5 * math.pi * (s + 1) / steps)) for s in range(steps)]
    left[-1] = 0
    return left


def causal_rank(confidence: torch.Tensor, w_c: float, w_s: float, w_r: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 1: rho(x_n) = w_c c(x_n) + w_s (1 - n/N) + w_r X, X ~ U(0, 1), for confidence [B, N]."""
    B, N = confidence.shape
    n = torch.arange(N, device=confidence.device, dtype=torch.float32)
    noise = torch.rand(B, N, device=confidence.device, generator=generator)
    return w_c * confidence.float() + w_s * (1.0 - n / N) + w_r * noise


def sample_tokens(logprobs: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """Sample one token per position from log-probs [B, T, V]; return tokens [B, T] and their probability.

    Gumbel-max sampling (argmax of log p / temperature + Gumbel noise) draws from softmax(log p / temperature);
    the confidence c(x_n) of eq. 1 is the sampled token's probability under that same distribution.
    """
    logp = torch.log_softmax(logprobs.float() / temperature, dim=-1)
    u = torch.rand(logp.shape, device=logp.device, generator=generator).clamp_(min=1e-20)
    tokens = (logp - torch.log(-torch.log(u))).argmax(dim=-1)
    confidence = logp.gather(-1, tokens[..., None]).squeeze(-1).exp()
    return tokens, confidence


def guidance_branches(guidance: str, null_instrument: int, instrument: torch.Tensor):
    """The conditions of every forward branch a guidance mode needs, stacked for one batch (Sec. 2.1.2).

    Returns instrument ids [k*B] and context_dropped [k*B] for the k branches, in the order
    p(t | c_a, c_i) for "none"; p(t), p(t | c) for "joint"; p(t), p(t | c_a), p(t | c_i) for "multi".
    """
    B = instrument.shape[0]
    keep = torch.zeros(B, dtype=torch.bool, device=instrument.device)
    drop = torch.ones_like(keep)
    null = torch.full_like(instrument, null_instrument)
    if guidance == "none":
        branches = [(instrument, keep)]                        # p(t | c_a, c_i)
    elif guidance == "joint":
        branches = [(null, drop), (instrument, keep)]          # p(t), p(t | c) with c = (c_a, c_i)
    elif guidance == "multi":
        branches = [(null, drop), (null, keep), (instrument, drop)]  # p(t), p(t | c_a), p(t | c_i)
    else:
        raise ValueError(f"unknown guidance mode {guidance!r}; choose from {GUIDANCE_MODES}")
    return torch.cat([b[0] for b in branches]), torch.cat([b[1] for b in branches])


@torch.no_grad()
def guided_level_logprobs(model, contexts, target, instruments, dropped, level: int, guidance: str,
                          scale_audio: float, scale_instrument: float) -> torch.Tensor:
    """All guidance branches in one batched forward pass, combined with eq. 2 / eq. 3: [B, T, V].

    contexts [k*B, Q, T], instruments and dropped [k*B] hold the k branches (guidance_branches); target is
    [B, Q, T] and is shared by every branch.
    """
    k = contexts.shape[0] // target.shape[0]
    logits = model(contexts, target.repeat(k, 1, 1), instruments, dropped, level=level)
    parts = logits.float().chunk(k)                        # k x [B, T, V]
    if guidance == "none":
        return torch.log_softmax(parts[0], dim=-1)
    if guidance == "joint":
        return guided_logprobs(parts[0], [parts[1]], [scale_audio])          # eq. 2
    return guided_logprobs(parts[0], [parts[1], parts[2]], [scale_audio, scale_instrument])  # eq. 3


@torch.no_grad()
def generate_tokens(model, context: torch.Tensor, instrument: torch.Tensor, steps=Sampling.steps,
                    w_c: float = Sampling.w_c, w_s: float = Sampling.w_s, w_r: float = Sampling.w_r,
                    guidance: str = Sampling.guidance, scale_audio: float = Sampling.scale_audio,
                    scale_instrument: float = Sampling.scale_instrument, temperature: float = Sampling.temperature,
                    prompt: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    progress: bool = True) -> torch.Tensor:
    """Generate target-stem tokens for a context, level by level (Sec. 2.1.1).

    Args:
        model: a StemGen in eval mode.
        context: LongTensor [B, Q, T] context-mix tokens.
        instrument: LongTensor [B] instrument ids.
        steps: decoding steps per level (paper: 128, 64, 32, 32).
        w_c, w_s, w_r: eq. 1 weights (confidence, causal bias, randomness).
        guidance: "none" (one pass with both sources), "joint" (eq. 2 with lambda = scale_audio) or
            "multi" (eq. 3 with lambda_a = scale_audio, lambda_i = scale_instrument).
        prompt: optional LongTensor [B, Q, P] of target tokens fixed at the start of the sequence.
        generator: a torch.Generator on the model's device; the same seed gives the same tokens.
    Returns:
        LongTensor [B, Q, T] of target tokens, no MASK left.
    """
    B, Q, T = context.shape
    cfg = model.cfg
    if Q != cfg.n_q:
        raise ValueError(f"context has {Q} levels but the model expects {cfg.n_q}")
    if len(steps) != Q or min(steps) < 1:
        raise ValueError(f"need one positive step count per level ({Q}), got {tuple(steps)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    dev = context.device
    target = torch.full_like(context, cfg.mask_id)                            # [B, Q, T]
    P = 0
    if prompt is not None:
        P = prompt.shape[-1]
        if prompt.shape[:2] != (B, Q) or P > T:
            raise ValueError(f"prompt of shape {tuple(prompt.shape)} does not fit context {(B, Q, T)}")
        target[:, :, :P] = prompt
    instruments, dropped = guidance_branches(guidance, cfg.n_instruments - 1, instrument)   # [k*B]
    contexts = context.repeat(instruments.shape[0] // B, 1, 1)                             # [k*B, Q, T]
    bar = tqdm(total=sum(steps), desc="decoding", unit="step", disable=not progress, leave=False)
    for q in range(Q):
        schedule = cosine_schedule(T - P, steps[q])
        n_masked = T - P
        for left in schedule:
            k = n_masked - left                                              # tokens fixed at this step
            bar.update(1)
            if k == 0:
                continue                                                     # nothing to fix this step
            with autocast(dev):
                logp = guided_level_logprobs(model, contexts, target, instruments, dropped, q, guidance,
                                             scale_audio, scale_instrument)  # [B, T, V]
            candidates, confidence = sample_tokens(logp, temperature, generator)
            rho = causal_rank(confidence, w_c, w_s, w_r, generator)          # eq. 1, [B, T]
            still_masked = target[:, q] == cfg.mask_id
            rho = rho.masked_fill(~still_masked, float("-inf"))              # fixed tokens stay fixed
            chosen = rho.topk(k, dim=1).indices                               # [B, k]
            fix = torch.zeros_like(still_masked).scatter_(1, chosen, True)
            target[:, q] = torch.where(fix, candidates, target[:, q])
            n_masked = left
    bar.close()
    return target
