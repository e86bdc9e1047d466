"""Context audio in, generated stem out (Sec. 2.1.1-2.1.2 of the paper).

    python generate.py --context mix.wav --instrument piano
    python generate.py --context mix.wav --instrument bass --instrument drums --mix

The context (wav/flac, any rate, any channel count, any length) is averaged to mono, resampled to the codec
rate and encoded to tokens; decode.py fills in the target-stem tokens level by level (eq. 1 ranking,
eq. 3 multi-source guidance); the codec turns them back into audio, which is written at the input's rate
and length. With several --instrument flags the stems are made in turn, the way the paper's introduction
describes: each new stem is added to the context before the next one is generated.

Contexts longer than the model's training window go through overlapping windows (decode.py): the overlap
with the previous window is given to the decoder as already-decoded target tokens, so the stem continues,
and the codec decodes the whole stitched sequence once, so there is no audio seam to crossfade. Each window's
decoding steps scale with the frames it adds (--steps are per 1000 new frames), so a long context costs about
what its new audio costs. The outputs
are written in the context's file type and sample format (a 24-bit wav gives 24-bit wavs, a flac gives flacs).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from plumbing import audio
import codec as codec_lib
import decode
from metrics import transcriber
from plumbing import stem_midi
from plumbing.checkpoint import (DEFAULT_CHECKPOINT, checkpoint_window_seconds, default_checkpoint, load_model,
                                 recommended_sampling, trained_classes)
from plumbing.cli import USER_ERROR, pick_device
from decode import DEFAULT_WINDOW_SECONDS
from plumbing.instruments import INSTRUMENTS
from plumbing.adding import (GenerateError, check_outputs, check_trained, default_mix_path, default_out_paths,
                             generate_stems, instrument_ids, midi_paths, read_context, write_outputs)
from plumbing.sampling_flags import add_sampling_flags, recommendation_line, sampling_from_args


# ---------------------------------------------------------------------------------------------------------
# Command line (reading the context, generating stems in turn and writing them: plumbing/adding.py; the sampling
# flags: plumbing/sampling_flags.py)

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Generate stems that fit a musical context (StemGen, Sec. 2.1.1-2.1.2). Writes each "
                    "stem, and with --mix (or several --instrument) the context plus the new stems, at the "
                    "input's sample rate and length.")
    p.add_argument("--context", required=True, metavar="PATH",
                   help="context mix (wav/flac, any rate, any number of channels, any length)")
    p.add_argument("--instrument", required=True, action="append", metavar="NAME",
                   help="instrument class of the stem (one of the 17 Slakh classes, case-insensitive, e.g. "
                        "piano, bass, drums, 'synth lead'; 'synth effects' is GM programs 96-103, which Slakh "
                        "labels 'Sound Effects', and 'sound effects' is programs 119-127); the checkpoint must "
                        "have trained on it; repeat to make several stems in turn")
    p.add_argument("--checkpoint", metavar="PATH",
                   help=f"model checkpoint written by train.py (default: runs/default/best.pt, else "
                        f"{DEFAULT_CHECKPOINT}, else the shipped model checkpoints/stemgen-music.pt)")
    p.add_argument("--out", action="append", metavar="PATH",
                   help="stem output path, one per --instrument (default: CONTEXT.INSTRUMENT.EXT, EXT being the "
                        "context's file type)")
    p.add_argument("--mix", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the context plus the new stem(s) (default path: "
                        "CONTEXT.with-INSTRUMENTS.EXT); always written with several --instrument")
    p.add_argument("--midi", action="store_true",
                   help="also write each stem's notes as a MIDI file beside it (STEM.mid), transcribed with "
                        "transcriber.py, at the context's tempo when one is detected (else 120 BPM), with the "
                        "instrument class's first GM program")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    add_sampling_flags(p.add_argument_group("sampling (defaults: the paper's best setting, with the knobs the "
                                            "checkpoint recommends applied over it)"))
    w = p.add_argument_group("long contexts")
    w.add_argument("--window", type=float, metavar="SECONDS",
                   help="window length for long contexts (default: the checkpoint's training crop, "
                        f"else {DEFAULT_WINDOW_SECONDS:g})")
    w.add_argument("--overlap", type=float, metavar="SECONDS",
                   help="overlap of consecutive windows, given to the model as already-decoded tokens "
                        "(default: half the window)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda[:N], mps (default: auto)")
    p.add_argument("--codec-weights", metavar="PATH",
                   help="where the checkpoint's codec weights are on this machine (a local facebook/encodec_32khz "
                        "folder, or a fitted spectral codec file) when its stored path does not exist here")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model with CUDA graphs (GPU; pays off for long or many stems)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    return p


def output_plan(args) -> tuple[list[int], list[str], str | None]:
    """Instrument ids, stem paths and mix path (None: no mix) from the flags, checked before any work."""
    try:
        instruments = instrument_ids(args.instrument)
    except ValueError as e:
        raise GenerateError(str(e)) from None
    outs = args.out or default_out_paths(args.context, instruments)
    if len(outs) != len(instruments):
        raise GenerateError(f"{len(outs)} --out paths for {len(instruments)} --instrument flags: "
                            f"give one per instrument, or none for the default names")
    mix_path = args.mix
    if mix_path is None and len(instruments) > 1 or mix_path == "":
        mix_path = default_mix_path(args.context, instruments)
    check_outputs(outs + ([mix_path] if mix_path else []), args.context, args.force)
    if args.midi:
        for p in midi_paths(outs):
            if os.path.exists(p) and not args.force:
                raise GenerateError(f"output exists: {p} (pass --force to overwrite)")
        transcriber.check_transcriber()                    # its install command now, not after the generation
    return instruments, outs, mix_path


def run(args) -> list[str]:
    """The CLI's work once arguments are parsed; returns the paths written."""
    sampling_from_args(args)                                                  # bad flag values fail before any work
    instruments, outs, mix_path = output_plan(args)
    x, sr = read_context(args.context)                                        # [C, S] at the file's rate
    subtype = audio.audio_format(args.context)[1]                             # e.g. PCM_24: kept in the outputs
    device = pick_device(args.device)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if args.checkpoint is None:
        args.checkpoint, why = default_checkpoint()
        say(f"checkpoint: {args.checkpoint} ({why}; --checkpoint chooses another)")
    net, tok, ckpt = load_model(args.checkpoint, device, args.codec_weights)
    check_trained(instruments, trained_classes(ckpt), args.checkpoint)
    recommended = recommended_sampling(ckpt)
    sampling = sampling_from_args(args, recommended)
    line = recommendation_line(recommended, args)
    if line:
        say(line)
    if len(sampling.steps) != net.cfg.n_q:
        raise GenerateError(f"--steps gives {len(sampling.steps)} values but the model has {net.cfg.n_q} "
                            f"token levels: give one per level")
    window_seconds = args.window if args.window is not None else checkpoint_window_seconds(ckpt)
    window, overlap = decode.window_frames(tok.frame_rate, net.cfg.max_len, window_seconds, args.overlap)
    if args.compile:
        net = torch.compile(net, mode="reduce-overhead")   # fixed window shapes: one CUDA graph per level

    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    say(f"seed {seed}; {', '.join(INSTRUMENTS[i] for i in instruments)} for {args.context} "
        f"({x.shape[1] / sr:.1f} s, {sr} Hz, {x.shape[0]} ch) on {device}")
    generator = torch.Generator(device=device).manual_seed(seed)
    context = audio.resample(audio.to_mono(x), sr, tok.sample_rate)           # [S'] at the codec rate
    stems = generate_stems(net, tok, context, instruments, sampling, window, overlap, generator, not args.quiet)
    stems = [audio.fit_length(audio.resample(s, tok.sample_rate, sr), x.shape[1]) for s in stems]  # [S] each

    outputs = list(zip(outs, stems))
    if mix_path:
        outputs.append((mix_path, x + sum(stems)[None, :]))                  # [C, S]
    write_outputs(outputs, sr, subtype, args.force, say)
    written = [p for p, _ in outputs]
    if args.midi:
        tempo = stem_midi.detect_tempo(x, sr)
        say(f"MIDI at the context's tempo, {tempo:.1f} BPM" if tempo else
            f"no steady tempo in the context: MIDI at {stem_midi.DEFAULT_TEMPO:g} BPM")
        for path, stem, iid in zip(midi_paths(outs), stems, instruments):
            stem_midi.write_midi(path, stem_midi.instrument_midi(stem, sr, iid, tempo), overwrite=args.force)
            say(f"wrote {path}")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (GenerateError, audio.AudioError, codec_lib.CodecUnavailable, transcriber.TranscriberUnavailable,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
