"""Make a Slakh-layout stem dataset (songs/synth.py): compose songs as MIDI parts (songs/compose.py) and render
them with a General MIDI SoundFont, or render your own multi-track MIDI files.

    python synth.py --out data/songs                       # the built-in songs
    python synth.py --out data/mine --midi my_midi_files/  # your own MIDI files
"""
from __future__ import annotations

import argparse
import sys

from plumbing.cli import USER_ERROR
from songs.synth import (add_render_options, DEFAULT_SECONDS, DEFAULT_TRACKS, SynthError, make_dataset,
                         render_midi_dir)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description="Make a Slakh-layout stem dataset: compose songs as MIDI parts and render them with a General "
                    "MIDI SoundFont, or (--midi) render your own multi-track MIDI files.")
    p.add_argument("--out", required=True, help="output dataset folder (must not exist or be empty)")
    p.add_argument("--tracks", type=int, default=DEFAULT_TRACKS, help=f"songs to compose (default {DEFAULT_TRACKS})")
    p.add_argument("--seconds", type=float, default=None,
                   help=f"song length in seconds (default {DEFAULT_SECONDS:g}; with --midi: whole files)")
    p.add_argument("--midi", default=None, help="render the .mid files under this folder instead of composing")
    add_render_options(p, "dataset")
    args = p.parse_args(argv)
    try:
        if args.midi:
            out, skips = render_midi_dir(args.midi, args.out, args.seconds, args.soundfont, args.workers,
                                         sample_rate=args.sample_rate, overwrite=args.overwrite)
            print(f"wrote {out}" + (f"; skipped {dict(skips)}" if skips else ""))
        else:
            out = make_dataset(args.out, args.tracks, args.seconds or DEFAULT_SECONDS, args.seed, args.soundfont,
                               args.workers, sample_rate=args.sample_rate, overwrite=args.overwrite,
                               one_program=args.one_program_per_class)
            print(f"wrote {out}")
    except SynthError as e:
        print(f"synth.py: error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR)


if __name__ == "__main__":
    main()
