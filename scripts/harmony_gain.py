"""Does a model prefer its context's own chords to the same context with its chords moved? The harmony term's
question (masking.harmony_plan), asked in tokens on held-out pairs: level-0 NLL (whole target masked) with the
context moved beat by beat, minus with its own, per pair, with a song-bootstrap interval. The diagnostic of
docs/log.md's entry "The harmony term" (2026-12-08); validation pairs only.

    python -m scripts.harmony_gain --data data/music1 checkpoints/stemgen-music.pt runs/harmony/best.pt
"""
from __future__ import annotations

import argparse

from metrics.listening import level0_nll, song_bootstrap
from training.checkpoint import load_model
from training.pool import codec_fingerprint, split_pool


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.harmony_gain", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints to compare (one codec: the pairs are tokenised once)")
    p.add_argument("--data", required=True, help="a Slakh-layout folder with a validation split")
    p.add_argument("--split", default="validation")
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0, help="crop length (the music recipe's)")
    p.add_argument("--segment", type=float, default=0.5, help="seconds moved to one key (--harmony-segment)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    pairs, first = None, None
    for path in args.checkpoints:
        model, codec, _ = load_model(path)
        if codec.name != "spectral":
            p.error(f"{path}: its codec is {codec.name}; the chords are moved inside the spectral codec's frames")
        if pairs is None:
            pairs, first = split_pool(codec, args.data, args.split, args.seconds, args.pairs, args.seed,
                                      progress=False, verbose=False, harmony_segment=args.segment), codec_fingerprint(codec)
        elif codec_fingerprint(codec) != first:
            p.error(f"{path} has another codec than {args.checkpoints[0]}: compare checkpoints of one codec")
        own, _ = level0_nll(model, pairs["context"], pairs["target"], pairs["instrument"])
        moved, _ = level0_nll(model, pairs["harmony"], pairs["target"], pairs["instrument"])
        mean, lo, hi = song_bootstrap((moved - own).numpy(), pairs["song"].numpy())
        print(f"{path}: moved chords cost {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] nats at level 0 "
              f"({len(own)} pairs, own context {own.mean():.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
