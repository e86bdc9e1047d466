"""Render real compositions from music21's corpus into a Slakh-layout stem dataset (songs/corpus.py).

    python corpus.py --out data/corpus                       # every usable work, two transpositions each
    python corpus.py --out data/transposed --split test --transpositions all --max-works 8
    python corpus.py --midi song.mid --out data/transposed-song --seconds 20 --start 30
"""
from __future__ import annotations

import argparse
import sys

from plumbing.cli import USER_ERROR
from songs.corpus import render_corpus, render_midi_transpositions
from songs.synth import SynthError, add_render_options


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description="Render real multi-part works from music21's corpus (offline, in its wheel) into a Slakh-layout "
                    "stem dataset, one stem per part, split by work. music21's bach/ folder is reserved for "
                    "held-out evaluation and never rendered.")
    p.add_argument("--out", required=True, help="output dataset folder (must not exist or be empty)")
    p.add_argument("--folders", nargs="*", default=None,
                   help="corpus folders to take works from, e.g. palestrina haydn (default: every folder but the "
                        "reserved bach/ and the single-line tune collections)")
    p.add_argument("--split", default="all", choices=["all", "train", "validation", "test"],
                   help="render only the works of one split (by the work's hash; default all three)")
    p.add_argument("--max-works", type=int, default=None, help="at most this many corpus files, drawn with --seed")
    p.add_argument("--transpositions", default="2",
                   help="keys per chunk: a number 1-12 of random transpositions, or 'all' twelve with the same "
                        "instruments (a transposition test set)")
    p.add_argument("--midi", default=None, metavar="FILE",
                   help="instead of the corpus: one multi-track MIDI file rendered in all twelve keys with its own "
                        "programs (a transposition test set, e.g. from a Lakh MIDI song); --start chooses the chunk")
    p.add_argument("--start", type=float, default=0.0, help="with --midi: where the chunk starts, in seconds")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each rendered chunk (default 30)")
    p.add_argument("--chunks", type=int, default=2, help="chunks per work, spread over its length (default 2)")
    add_render_options(p, "dataset")
    args = p.parse_args(argv)
    if args.midi:
        ignored = [f for f, v in (("--folders", args.folders), ("--split", args.split != "all"),
                                  ("--max-works", args.max_works is not None), ("--transpositions", args.transpositions != "2"),
                                  ("--chunks", args.chunks != 2), ("--one-program-per-class", args.one_program_per_class))
                   if v]
        if ignored:
            p.error(f"--midi renders one file in all twelve keys with its own programs: {', '.join(ignored)} "
                    "do not apply to it")
    try:
        if args.midi:
            out = render_midi_transpositions(args.midi, args.out, args.seconds, args.start, args.sample_rate,
                                             args.soundfont, args.overwrite)
            print(f"wrote {out}: twelve transpositions of {args.midi}")
            return
        out, counts = render_corpus(args.out, args.folders, args.split, args.max_works, args.transpositions,
                                    args.seconds, args.chunks, args.seed, args.sample_rate, args.soundfont,
                                    args.workers, overwrite=args.overwrite, one_program=args.one_program_per_class)
        print(f"wrote {out}: {dict(counts)}")
    except SynthError as e:
        print(f"corpus.py: error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR)


if __name__ == "__main__":
    main()
