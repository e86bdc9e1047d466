"""`python spectral.py fit`: fit the offline spectral codec (plumbing/spectral.py) on a Slakh-layout folder.

    python spectral.py fit --data DIR --out FILE        # fit on the train split of a Slakh-layout folder
    python bench.py codec --codec FILE --data DIR       # its round-trip quality on held-out audio
"""
from __future__ import annotations

import argparse
import sys
import time

from codec import CodecUnavailable
from plumbing.cli import USER_ERROR, DefaultsHelp
from plumbing.spectral import WEIGHTINGS, SpectralConfig, fit_spectral

def build_parser() -> argparse.ArgumentParser:
    """`fit`, its defaults taken from SpectralConfig."""
    d = SpectralConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the offline spectral codec on a Slakh-layout dataset",
                       formatter_class=DefaultsHelp)
    f.add_argument("--data", required=True, help="dataset folder (TrackNNNNN/stems/SNN.flac|wav; train/ split "
                   "used when present)")
    f.add_argument("--out", required=True, help="file to write the fitted codec to (.pt)")
    f.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    f.add_argument("--n-q", type=int, default=d.n_q, help="RVQ levels (the paper's Encodec has 4)")
    f.add_argument("--bins", type=int, default=d.bins, help="codewords per level")
    f.add_argument("--dim", type=int, default=d.dim, help="PCA dimensions")
    f.add_argument("--sample-rate", type=int, default=d.sample_rate, help="codec sample rate (Hz)")
    f.add_argument("--n-fft", type=int, default=d.n_fft, help="STFT size")
    f.add_argument("--power", type=float, default=d.power, help="magnitude compression exponent")
    f.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting,
                   help="octave: each octave weighs the same in PCA and k-means, so level 0 keeps pitch; flat: each bin")
    f.add_argument("--floor-hz", type=float, default=d.floor_hz, help="the octave weighting is constant below this")
    f.add_argument("--seconds-per-track", type=float, default=d.seconds_per_track, help="audio read per track")
    f.add_argument("--max-frames", type=int, default=d.max_frames, help="frames kept for fitting")
    f.add_argument("--kmeans-iters", type=int, default=d.kmeans_iters, help="Lloyd iterations per level")
    f.add_argument("--griffin-lim-iters", type=int, default=d.griffin_lim_iters,
                   help="phase-recovery iterations when decoding (64 or 128 change spectral convergence by < 0.01)")
    f.add_argument("--seed", type=int, default=d.seed)
    return p


def run_fit(args) -> None:
    """`python spectral.py fit`: fit, write the file, say what was written."""
    t0 = time.perf_counter()
    cfg = SpectralConfig(n_q=args.n_q, bins=args.bins, dim=args.dim, sample_rate=args.sample_rate,
                         n_fft=args.n_fft, power=args.power, weighting=args.weighting,
                         floor_hz=args.floor_hz, seconds_per_track=args.seconds_per_track,
                         max_frames=args.max_frames, kmeans_iters=args.kmeans_iters,
                         griffin_lim_iters=args.griffin_lim_iters, seed=args.seed)
    codec = fit_spectral(args.data, args.out, cfg, overwrite=args.force)
    print(f"wrote {args.out}: spectral codec {codec.n_q} x {codec.bins} bins, PCA {cfg.dim}, "
          f"{codec.sample_rate} Hz, {codec.frame_rate} Hz frames ({time.perf_counter() - t0:.0f} s)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_fit(args)
    except (CodecUnavailable, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
