"""Is the generated bass late or early on the chords? Its chord fit in time (metrics/harmony.py) against the context
moved by -4..+4 frames, beside the real bass's; the diagnostic in docs/log.md's entry "Eq. 2 and a weaker
instrument pull" (2026-12-08), on validation works only.

    python -m scripts.harmony_lag --data data/transposed-val48 --split validation

The contexts of scripts/harmony_sampling.py (the same transpositions and seed) and the checkpoint's own sampling.
A lag L > 0 pairs the part's frame i + L with the context's frame i: the part L frames late.
"""
from __future__ import annotations

import argparse
import sys
import numpy as np

from metrics import harmony, musicality
from metrics.sweep import generate_stems
from scripts.harmony_sampling import validation_bass
from training.checkpoint import SHIPPED_CHECKPOINT


def lagged_fit(part: np.ndarray, context: np.ndarray, lag: int) -> float | None:
    """chord_fit of part frames i + lag against context frames i ([12, F] chromas)."""
    n = min(part.shape[1], context.shape[1])
    part, context = part[:, :n], context[:, :n]
    if lag > 0:
        part, context = part[:, lag:], context[:, :n - lag]
    elif lag < 0:
        part, context = part[:, :n + lag], context[:, -lag:]
    return harmony.chord_fit(part, context)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.harmony_lag", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder of works in twelve keys (python -m songs.corpus)")
    p.add_argument("--split", default="validation")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    p.add_argument("--keys", type=int, nargs="+", default=[0, 3, 6, 9], help="the transpositions used")
    p.add_argument("--frame-seconds", type=float, default=harmony.FRAME_SECONDS)
    args = p.parse_args(argv)
    net, tok, sampling, examples, _ = validation_bass(args.checkpoint, args.data, args.split, args.keys, 5.0)
    made = generate_stems(net, tok, [e["context"] for e in examples],
                          [musicality.instrument_id("bass")] * len(examples), sampling, 0, 5.0, 16, True, "bass")
    sr, fs = tok.sample_rate, args.frame_seconds
    contexts = [harmony.frame_chroma(e["context"], sr, fs) for e in examples]          # once, for both parts
    lags = range(-4, 5)
    print("| part | " + " | ".join(f"{lag:+d}" for lag in lags) + " |\n|" + " --- |" * (len(lags) + 1))
    for name, parts in (("real bass", [e["real"] for e in examples]), ("generated bass", made)):
        chromas = [(harmony.frame_chroma(w, sr, fs), cc) for w, cc in zip(parts, contexts)]
        means = []
        for lag in lags:
            fits = [f for f in (lagged_fit(pc, cc, lag) for pc, cc in chromas) if f is not None]
            means.append(f"{np.mean(fits):.3f}")
        print(f"| {name} | " + " | ".join(means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
