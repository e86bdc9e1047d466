"""The sampling flags generate.py and evaluate.py share (Sec. 2.1.1-2.1.2), and how a run's sampling is made
from them: the paper's values (`decode.Sampling`), then the knobs the checkpoint recommends
(checkpoint.SAMPLING) unless --paper-sampling, then every flag given."""
from __future__ import annotations

from dataclasses import replace

import decode
from decode import Sampling
from guidance import GUIDANCE_MODES
from plumbing.checkpoint import RECOMMENDABLE, sampling_text


def steps_text(steps) -> str:
    return " ".join(map(str, steps))


def add_sampling_flags(g, naive_and_seed: bool = True) -> None:
    """The decoding flags (Sec. 2.1.1-2.1.2); each unset one takes the checkpoint's recommended value, else
    `Sampling`'s (the value the help shows). evaluate.py adds them without --naive and --seed."""
    d = Sampling()
    g.add_argument("--steps", type=int, nargs="+", metavar="N",
                   help=f"decoding steps per level, coarsest first, for {decode.STEPS_FRAMES} new frames (20 s at "
                        f"the codecs' 50 Hz, as in the paper); a window that decodes fewer frames takes "
                        f"proportionally fewer, rounded up, at least 1: with the defaults a 5 s window takes "
                        f"{steps_text(decode.steps_for(d.steps, 250))}, and "
                        f"{steps_text(decode.steps_for(d.steps, 125))} past a 2.5 s prompt (default: {steps_text(d.steps)})")
    g.add_argument("--w-c", type=float, help=f"eq. 1 confidence weight (default: {d.w_c})")
    g.add_argument("--w-s", type=float, help=f"eq. 1 causal-bias weight (default: {d.w_s})")
    g.add_argument("--w-r", type=float, help=f"eq. 1 random weight (default: {d.w_r})")
    g.add_argument("--guidance", choices=GUIDANCE_MODES,
                   help=f"classifier-free guidance: multi = eq. 3, joint = eq. 2 (default: {d.guidance})")
    g.add_argument("--scale-audio", type=float, metavar="LAMBDA_A",
                   help=f"guidance scale of the context (lambda_a; lambda of eq. 2) (default: {d.scale_audio})")
    g.add_argument("--scale-instrument", type=float, metavar="LAMBDA_I",
                   help=f"guidance scale of the instrument (lambda_i) (default: {d.scale_instrument})")
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
    g.add_argument("--seed", type=int, help="random seed; the same seed gives the same audio "
                                            "(default: a fresh seed, printed)")


def sampling_from_args(args, recommended: dict | None = None) -> Sampling:
    """The paper's best (or, with --naive, naive) setting, then the checkpoint's recommended knobs (unless
    --paper-sampling), then every explicitly given flag. evaluate.py has no --naive."""
    base = Sampling.naive() if getattr(args, "naive", False) else Sampling()
    if recommended and not args.paper_sampling:
        base = replace(base, **recommended)
    given = {k: getattr(args, k) for k in RECOMMENDABLE if getattr(args, k, None) is not None}
    if args.steps is not None:
        given["steps"] = tuple(args.steps)
    return replace(base, **given)


def recommendation_line(recommended: dict, args) -> str | None:
    """What a command prints when the checkpoint's recommended knobs are applied (None when none are)."""
    if not recommended or args.paper_sampling:
        return None
    return (f"sampling: {sampling_text(recommended)}, as the checkpoint recommends, over the paper's values "
            f"(--paper-sampling ignores it; a flag overrides it)")
