"""Causally-biased iterative decoding, level by level (Sec. 2.1.1, Sec. 3.2.1), and windows for long contexts.

For each RVQ level, coarsest first, the level starts fully masked. At each of its S steps the model
predicts every position; a candidate token is sampled for each masked position from the guided
distribution (eq. 2 / eq. 3, guidance.py); candidates are ranked with eq. 1 and the top-ranked ones are
fixed for good, so that after step s only floor(M cos(pi/2 (s+1)/S)) of the M initially masked positions
stay masked. The next level starts once a level is complete. The paper's step counts (128, 64, 32, 32) are
for its 20 s targets, 1000 frames: a call that decodes fewer frames takes proportionally fewer steps
(`steps_for`), so a window whose first half is prompt costs about half a window.

As in gpt-fast's generate.py, the knobs travel as one bundle (`Sampling`), a step is a chain of short
functions (`sample_tokens` -> `causal_rank` -> `fix_top_ranked`), and progress is reported by a callback.

Contexts longer than the model's training window go through overlapping windows (`plan_windows`). The part
of each window that overlaps the previous one is handed to the decoder as already-decoded target tokens (a
SoundStorm-style prompt), so the stem continues across windows; the windows are stitched at token level and
the codec decodes the whole sequence once, so there is no audio seam to crossfade.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np
import torch

from guidance import GUIDANCE_MODES, combine_branches, guidance_branches, shifted_in_time
from model import autocast

DEFAULT_WINDOW_SECONDS = 20.0  # the paper's training crop (Sec. 3; data.CROP_SECONDS, a test checks they agree): the
#                                window when a checkpoint does not say
STEPS_FRAMES = 1000  # Sampling.steps are per this many decoded frames: the paper's 20 s targets at Encodec's 50 Hz

OnStep = Callable[[int], object]  # progress callback, called with 1 after every decoding step (tqdm.update)


@dataclass
class Sampling:
    """Sampling knobs with the paper's values as defaults (Sec. 2.1.1, 2.1.2, 3.2.1)."""
    steps: tuple[int, ...] = (128, 64, 32, 32)  # decoding steps per RVQ level, coarsest first, per STEPS_FRAMES
    #                                             decoded frames (steps_for scales them to what a call decodes)
    w_c: float = 0.1              # eq. 1 weight of the model's confidence
    w_s: float = 0.1              # eq. 1 weight of the causal bias (1 - n/N)
    w_r: float = 1.0              # eq. 1 weight of the uniform noise X
    guidance: str = "multi"       # "multi" (eq. 3), "joint" (eq. 2) or "none"
    scale_audio: float = 3.0      # lambda_a: guidance scale of the context-mix (eq. 3), lambda of eq. 2
    scale_instrument: float = 3.0  # lambda_i: guidance scale of the instrument (eq. 3)
    scale_timing: float = 0.0     # lambda_t: timing guidance (guidance.timing_guided; ours, 0 = off as in the paper)
    timing_shift: float = 0.5     # how far timing guidance rolls the context, as a fraction of the window
    temperature: float = 1.0      # softmax temperature of the sampled candidates (the paper gives none)
    fine_temperature: float | None = None  # levels 1.. (finer RVQ levels): None = `temperature`; 0 = greedy,
    #                               the most likely token, as SoundStorm decodes its finer levels (NOTES.md)

    def __post_init__(self):
        knobs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("steps", "guidance")}
        bad = {k: v for k, v in knobs.items() if v is not None and not math.isfinite(v)}
        if bad:
            raise ValueError("sampling values must be finite numbers: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance mode {self.guidance!r}; choose from {GUIDANCE_MODES}")
        if len(self.steps) == 0 or min(self.steps) < 1:
            raise ValueError(f"steps must be positive, one count per level; got {tuple(self.steps)}")
        if self.scale_timing < 0:
            raise ValueError(f"scale_timing must be 0 (off) or above, got {self.scale_timing}")
        if not 0 < self.timing_shift < 1:
            raise ValueError(f"timing_shift is a fraction of the window, above 0 and below 1; got {self.timing_shift}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be above 0, got {self.temperature}")
        if self.fine_temperature is not None and self.fine_temperature < 0:
            raise ValueError(f"fine_temperature must be 0 (greedy) or above, got {self.fine_temperature}")

    @classmethod
    def naive(cls, **overrides) -> "Sampling":
        """The paper's naive setting (Sec. 3.2, Tab. 3): no classifier-free guidance and no causal bias."""
        return replace(cls(guidance="none", w_s=0.0), **overrides)

    def level_temperature(self, level: int) -> float:
        """The sampling temperature of one RVQ level (0: greedy)."""
        return self.temperature if level == 0 or self.fine_temperature is None else self.fine_temperature

    def level_steps(self, n_frames: int) -> tuple[int, ...]:
        """Steps per level for a call that decodes n_frames target frames (steps_for)."""
        return steps_for(self.steps, n_frames)


def steps_for(steps_per_1000: tuple[int, ...], n_frames: int) -> tuple[int, ...]:
    """Steps per level for decoding n_frames: each count given for STEPS_FRAMES frames, scaled in proportion and
    rounded up, at least 1 (1000 frames keep the counts as given)."""
    return tuple(max(1, -(-s * n_frames // STEPS_FRAMES)) for s in steps_per_1000)


def planned_steps(sampling: Sampling, plan: list[tuple[int, int, int]]) -> int:
    """Decoding steps (on_step calls) of generate_stem_tokens over a window plan (plan_windows), all levels."""
    return sum(sum(sampling.level_steps(end - start - p)) for start, end, p in plan)


# ---------------------------------------------------------------------------------------------------------
# One decoding step: guided distribution -> sample -> rank (eq. 1) -> fix the top-ranked

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
    Temperature 0 is greedy: the most likely token, its confidence its probability under softmax(log p).
    """
    if temperature == 0:
        logp = torch.log_softmax(logprobs.float(), dim=-1)
        confidence, tokens = logp.max(dim=-1)
        return tokens, confidence.exp()
    logp = torch.log_softmax(logprobs.float() / temperature, dim=-1)
    u = torch.rand(logp.shape, device=logp.device, generator=generator).clamp_(min=1e-20)
    tokens = (logp - torch.log(-torch.log(u))).argmax(dim=-1)
    confidence = logp.gather(-1, tokens[..., None]).squeeze(-1).exp()
    return tokens, confidence


def fix_top_ranked(tokens: torch.Tensor, candidates: torch.Tensor, rho: torch.Tensor, k: int,
                   mask_id: int) -> torch.Tensor:
    """One level's tokens [B, T] with the k top-ranked candidates fixed at still-masked positions."""
    still_masked = tokens == mask_id
    rho = rho.masked_fill(~still_masked, float("-inf"))                 # fixed tokens stay fixed
    chosen = rho.topk(k, dim=1).indices                                  # [B, k]
    fix = torch.zeros_like(still_masked).scatter_(1, chosen, True)
    return torch.where(fix, candidates, tokens)


def decode_step(model, contexts, target, instruments, dropped, level: int, k: int, sampling: Sampling,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One step at one level: every guidance branch in one batched forward pass, eq. 2 / eq. 3, sampling,
    eq. 1 ranking; returns the level's tokens [B, T] with k more fixed.

    contexts [k*B, Q, T], instruments and dropped [k*B] hold the branches (guidance.guidance_branches);
    target [B, Q, T] is shared by every branch.
    """
    n_branches = contexts.shape[0] // target.shape[0]
    with autocast(contexts.device):
        logits = model(contexts, target.repeat(n_branches, 1, 1), instruments, dropped, level=level)
        logp = combine_branches(sampling.guidance, logits, sampling.scale_audio, sampling.scale_instrument,
                                sampling.scale_timing)
    candidates, confidence = sample_tokens(logp, sampling.level_temperature(level), generator)  # [B, T]
    rho = causal_rank(confidence, sampling.w_c, sampling.w_s, sampling.w_r, generator)     # eq. 1, [B, T]
    return fix_top_ranked(target[:, level], candidates, rho, k, model.cfg.mask_id)


# ---------------------------------------------------------------------------------------------------------
# Level by level

def initial_target(context: torch.Tensor, mask_id: int, prompt: torch.Tensor | None) -> torch.Tensor:
    """Target tokens [B, Q, T] before decoding: the prompt [B, Q, P] at the start, MASK everywhere else."""
    target = torch.full_like(context, mask_id)                          # [B, Q, T]
    if prompt is not None:
        B, Q, T = context.shape
        if prompt.shape[:2] != (B, Q) or prompt.shape[-1] > T:
            raise ValueError(f"prompt of shape {tuple(prompt.shape)} does not fit context {(B, Q, T)}")
        target[:, :, :prompt.shape[-1]] = prompt
    return target


@torch.no_grad()
def generate_tokens(model, context: torch.Tensor, instrument: torch.Tensor, sampling: Sampling,
                    prompt: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    on_step: OnStep | None = None) -> torch.Tensor:
    """Generate target-stem tokens for a context, level by level (Sec. 2.1.1).

    Args:
        model: a StemGen in eval mode.
        context: LongTensor [B, Q, T] context-mix tokens.
        instrument: LongTensor [B] instrument ids.
        sampling: steps per level per STEPS_FRAMES decoded frames (paper: 128, 64, 32, 32; scaled to the
            frames this call decodes, sampling.level_steps), eq. 1 weights, guidance ("none": one pass with
            both sources; "joint": eq. 2 with lambda = scale_audio; "multi": eq. 3 with lambda_a = scale_audio,
            lambda_i = scale_instrument; scale_timing > 0 adds timing guidance, ours) and temperature.
        prompt: optional LongTensor [B, Q, P] of target tokens fixed at the start of the sequence.
        generator: a torch.Generator on the model's device; the same seed gives the same tokens.
        on_step: called with 1 after every decoding step (e.g. a tqdm bar's update).
    Returns:
        LongTensor [B, Q, T] of target tokens, no MASK left.
    """
    B, Q, T = context.shape
    cfg = model.cfg
    if Q != cfg.n_q:
        raise ValueError(f"context has {Q} levels but the model expects {cfg.n_q}")
    if len(sampling.steps) != Q:
        raise ValueError(f"need one positive step count per level ({Q}), got {tuple(sampling.steps)}")
    target = initial_target(context, cfg.mask_id, prompt)                    # [B, Q, T]
    n_free = T - (0 if prompt is None else prompt.shape[-1])
    timing = sampling.scale_timing > 0                                       # one more branch, shifted in time
    instruments, dropped = guidance_branches(sampling.guidance, cfg.n_instruments - 1, instrument, timing)  # [k*B]
    contexts = context.repeat(instruments.shape[0] // B - timing, 1, 1)
    if timing:
        contexts = torch.cat([contexts, shifted_in_time(context, sampling.timing_shift)])   # [k*B, Q, T]
    steps = sampling.level_steps(n_free)
    for q in range(Q):
        n_masked = n_free
        for left in cosine_schedule(n_free, steps[q]):
            if n_masked > left:                                              # a step that fixes nothing is skipped
                target[:, q] = decode_step(model, contexts, target, instruments, dropped, q, n_masked - left,
                                           sampling, generator)
            n_masked = left
            if on_step is not None:
                on_step(1)
    return target


# ---------------------------------------------------------------------------------------------------------
# Windows over long contexts

def plan_windows(n_frames: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """Overlapping windows covering n_frames: (start, end, prompt) with prompt = frames already decoded.

    Every window but the first starts `window - overlap` frames after the previous one; the last one is
    moved back to end exactly at n_frames, so every window has the training length (its prompt then grows).
    A context no longer than one window is a single window of its own length.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < window, got window {window} and overlap {overlap} frames")
    if n_frames <= window:
        return [(0, n_frames, 0)]
    starts = [0]
    while starts[-1] + window < n_frames:
        starts.append(min(starts[-1] + window - overlap, n_frames - window))
    return [(s, s + window, 0 if i == 0 else starts[i - 1] + window - s) for i, s in enumerate(starts)]


def window_frames(frame_rate: float, max_len: int, window_seconds: float | None = None,
                  overlap_seconds: float | None = None) -> tuple[int, int]:
    """Window and overlap in codec frames: the window defaults to DEFAULT_WINDOW_SECONDS, the overlap to half
    the window; the window must fit the model's max_len."""
    window_seconds = DEFAULT_WINDOW_SECONDS if window_seconds is None else window_seconds
    if not (math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"--window must be a positive number of seconds, got {window_seconds}")
    if overlap_seconds is None:
        overlap_seconds = window_seconds / 2
    if not (math.isfinite(overlap_seconds) and 0 <= overlap_seconds < window_seconds):
        raise ValueError(f"--overlap must be at least 0 and shorter than the window ({window_seconds:g} s), "
                         f"got {overlap_seconds:g}")
    window = max(1, round(window_seconds * frame_rate))
    if window > max_len:
        raise ValueError(f"--window of {window} frames exceeds the model's max_len ({max_len} frames = "
                         f"{max_len / frame_rate:g} s): give a shorter --window")
    return window, min(window - 1, round(overlap_seconds * frame_rate))


@torch.no_grad()
def generate_stem_tokens(model, context: torch.Tensor, instrument, sampling: Sampling, window: int,
                         overlap: int, generator: torch.Generator | None = None,
                         on_step: OnStep | None = None) -> torch.Tensor:
    """Target tokens for context tokens [B, Q, T] of any length, window by window (Sec. 2.1.1); `instrument` is
    one id for all B, or one per example.

    Each window's overlap with the previous one is given to generate_tokens as a prompt of already-decoded
    target tokens, so the stem continues, and only the frames after it count for its steps (Sampling.level_steps);
    the results are stitched at token level. Returns LongTensor [B, Q, T].
    """
    target = torch.full_like(context, -1)                                     # [B, Q, T], -1 = not yet
    inst = torch.as_tensor(instrument, device=context.device).reshape(-1).expand(context.shape[0])    # [B]
    for start, end, p in plan_windows(context.shape[-1], window, overlap):
        prompt = target[:, :, start:start + p] if p else None                 # [B, Q, P]
        target[:, :, start:end] = generate_tokens(model, context[:, :, start:end], inst, sampling, prompt=prompt,
                                                  generator=generator, on_step=on_step)
    return target


@torch.no_grad()
def generate_stem_batch(model, tok, contexts: np.ndarray, instruments, sampling: Sampling, window: int,
                        overlap: int, generator: torch.Generator | None = None,
                        on_step: OnStep | None = None) -> np.ndarray:
    """Stems for mono contexts [B, S] of one length at tok.sample_rate, decoded together: encode, decode
    windows (generate_stem_tokens), codec decode. Returns float32 [B, S], sample-aligned with the contexts."""
    n = contexts.shape[-1]
    device = next(model.parameters()).device
    mix = torch.as_tensor(np.asarray(contexts, dtype=np.float32), device=device)  # [B, S]
    ctx_tokens = tok.encode(mix[:, None])                                         # [B, Q, T]
    tgt_tokens = generate_stem_tokens(model, ctx_tokens, instruments, sampling, window, overlap, generator,
                                      on_step)
    stems = tok.decode(tgt_tokens)[:, 0, :n].float()                              # [B, S]
    if stems.shape[-1] < n:
        stems = torch.nn.functional.pad(stems, (0, n - stems.shape[-1]))
    return stems.cpu().numpy()


def generate_stem(model, tok, context: np.ndarray, instrument: int, sampling: Sampling, window: int,
                  overlap: int, generator: torch.Generator | None = None,
                  on_step: OnStep | None = None) -> np.ndarray:
    """One stem for a mono context [S] at tok.sample_rate, any length (generate_stem_batch of one).

    Returns float32 [S] at tok.sample_rate, sample-aligned with the context.
    """
    return generate_stem_batch(model, tok, np.asarray(context)[None], instrument, sampling, window, overlap,
                               generator, on_step)[0]


# ---------------------------------------------------------------------------------------------------------
# The sampling a run uses: the paper's values, then the checkpoint's recommendation, then the flags given.
# A checkpoint may carry the knobs its recipe chose on validation data (`sampling` in the file, train.Recipe),
# as {knob: value} over Sampling's level-free fields; generate.py, evaluate.py and the page resolve them here.

RECOMMENDABLE = tuple(f.name for f in fields(Sampling) if f.name != "steps")  # steps depend on the model's levels


def check_sampling(sampling: dict) -> dict:
    """A recommended sampling, checked: only level-free knobs of Sampling, with values it accepts (ValueError)."""
    unknown = set(sampling) - set(RECOMMENDABLE)
    if unknown:
        raise ValueError(f"unknown sampling knobs {sorted(unknown)}; choose from {list(RECOMMENDABLE)}")
    try:
        Sampling(**sampling)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sampling {sampling}: {e}") from None
    return dict(sampling)


def parse_sampling(words: list[str]) -> dict:
    """KNOB=VALUE words (`python -m training.ship --sampling`) as a checked sampling dict; values are numbers but
    guidance. The one word "none" is the empty recommendation (the paper's values)."""
    if [w.lower() for w in words] == ["none"]:
        return {}
    out = {}
    for w in words:
        knob, eq, value = w.partition("=")
        knob = knob.strip().replace("-", "_")
        if not eq or not value.strip():
            raise ValueError(f"{w!r}: give KNOB=VALUE, e.g. fine_temperature=0")
        if knob == "guidance":
            out[knob] = value.strip()
            continue
        try:
            out[knob] = float(value)
        except ValueError:
            raise ValueError(f"{w!r}: {value!r} is not a number") from None
    return check_sampling(out)


def sampling_text(sampling: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sampling.items())


def steps_text(steps) -> str:
    return " ".join(map(str, steps))


def add_sampling_flags(g, naive_and_seed: bool = True) -> None:
    """The decoding flags (Sec. 2.1.1-2.1.2); each unset one takes the checkpoint's recommended value, else
    `Sampling`'s (the value the help shows). evaluate.py adds them without --naive and --seed."""
    d = Sampling()
    g.add_argument("--steps", type=int, nargs="+", metavar="N",
                   help=f"decoding steps per level, coarsest first, for {STEPS_FRAMES} new frames (20 s at "
                        f"the codecs' 50 Hz, as in the paper); a window that decodes fewer frames takes "
                        f"proportionally fewer, rounded up, at least 1: with the defaults a 5 s window takes "
                        f"{steps_text(steps_for(d.steps, 250))}, and "
                        f"{steps_text(steps_for(d.steps, 125))} past a 2.5 s prompt (default: {steps_text(d.steps)})")
    g.add_argument("--w-c", type=float, help=f"eq. 1 confidence weight (default: {d.w_c})")
    g.add_argument("--w-s", type=float, help=f"eq. 1 causal-bias weight (default: {d.w_s})")
    g.add_argument("--w-r", type=float, help=f"eq. 1 random weight (default: {d.w_r})")
    g.add_argument("--guidance", choices=GUIDANCE_MODES,
                   help=f"classifier-free guidance: multi = eq. 3, joint = eq. 2 (default: {d.guidance})")
    g.add_argument("--scale-audio", type=float, metavar="LAMBDA_A",
                   help=f"guidance scale of the context (lambda_a; lambda of eq. 2) (default: {d.scale_audio})")
    g.add_argument("--scale-instrument", type=float, metavar="LAMBDA_I",
                   help=f"guidance scale of the instrument (lambda_i) (default: {d.scale_instrument})")
    g.add_argument("--scale-timing", type=float, metavar="LAMBDA_T",
                   help="timing guidance (ours, not the paper's): how much more the part follows its context "
                        "than the same context shifted in time (--timing-shift); costs one more forward pass a "
                        f"step (default: {d.scale_timing}, off)")
    g.add_argument("--timing-shift", type=float, metavar="FRACTION",
                   help=f"how far timing guidance shifts the context, as a fraction of the window (default: "
                        f"{d.timing_shift})")
    g.add_argument("--temperature", type=float, help=f"sampling temperature (default: {d.temperature})")
    g.add_argument("--fine-temperature", type=float,
                   help="temperature of the finer RVQ levels (1..); 0 = greedy, as SoundStorm (default: "
                        f"{'--temperature' if d.fine_temperature is None else d.fine_temperature})")
    g.add_argument("--paper-sampling", action="store_true",
                   help="ignore the sampling the checkpoint recommends (the shipped model recommends greedy "
                        "finer levels, chosen on validation data: README) and start from the paper's values")
    if not naive_and_seed:
        return
    g.add_argument("--naive", action="store_true",
                   help="the paper's naive setting: no guidance, no causal bias (w_s = 0); explicit "
                        "flags above still override it")
    g.add_argument("--seed", type=seed_value, help="random seed, 0 to 2^63 - 1; the same seed gives the same audio "
                                            "(default: a fresh seed, printed)")


def seed_value(text: str) -> int:
    """--seed: a whole number from 0 to 2^63 - 1 (what torch.Generator.manual_seed takes)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= seed < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{text} is outside 0 to 2^63 - 1")
    return seed


def resolve_sampling(args, recommended: dict | None = None) -> tuple[Sampling, str | None]:
    """The one place a run's sampling is decided: the paper's best (or, with --naive, naive) setting, then the
    checkpoint's recommended knobs (unless --paper-sampling), then every flag given (evaluate.py has no --naive).
    Returns it and the line a command prints when a recommendation was applied (None when none was)."""
    base = Sampling.naive() if getattr(args, "naive", False) else Sampling()
    applied = bool(recommended) and not args.paper_sampling
    if applied:
        base = replace(base, **recommended)
    given = {k: getattr(args, k) for k in RECOMMENDABLE if getattr(args, k, None) is not None}
    if args.steps is not None:
        given["steps"] = tuple(args.steps)
    line = (f"sampling: {sampling_text(recommended)}, as the checkpoint recommends, over the paper's values "
            f"(--paper-sampling ignores it; a flag overrides it)") if applied else None
    return replace(base, **given), line
