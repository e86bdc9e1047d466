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
what its new audio costs. The outputs are written in the context's file type and sample format (a 24-bit wav
gives 24-bit wavs, a flac gives flacs), atomically, and never over an existing file without --force.

The page (app.py, page/engine.py) adds parts with this file's functions: read_context, check_trained,
generate_stems, the output names and write_outputs.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import codec as codec_lib
import decode
from audio import files as audio_files
from audio.instruments import INSTRUMENTS, instrument_id
from cli.common import USER_ERROR, pick_device
from decode import DEFAULT_WINDOW_SECONDS, add_sampling_flags, resolve_sampling
from metrics import harmony       # numpy only: the fit line after every generation
from notes import transcriber     # its model loads on first use; notes.midi (librosa, pretty_midi) only with --midi
from training.checkpoint import (checkpoint_window_seconds, default_checkpoint, load_model, recommended_sampling,
                                 trained_classes)

SILENCE_PEAK = 10 ** (-80 / 20)   # a context whose peak is below -80 dBFS is treated as silent
MIN_SECONDS = 0.1                 # a shorter context is refused (as the page does): no music to listen to
LONG_JOB_STEPS = 2000             # more planned decoding steps than this: warned, even under --quiet
STEPS_PER_SECOND = 5.0            # the shipped model's decoding pace on the 2 CPU cores of the development machine
# The built-in example (--example): 12 s of a work of music21's corpus held out from the shipped model's training
# (its test split; not Bach), rendered with a General MIDI SoundFont, without its bass (examples/ has the bass too).
EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples", "monteverdi-madrigal-4-16.flac")
EXAMPLE_BASS = EXAMPLE.replace(".flac", ".bass.flac")   # its real bass, drawn beside the new one with --plot
EXAMPLE_TEXT = "12 s of Monteverdi's madrigal 4.16, held out from training, without its bass"
EXAMPLE_OUT = os.path.join("runs", "example")


class GenerateError(RuntimeError):
    """A problem the user can fix (bad flag, missing checkpoint, unusable context); one line, no traceback."""


# ---------------------------------------------------------------------------------------------------------
# Reading the context, the stems in turn, the outputs

def read_context(path: str) -> tuple[np.ndarray, int]:
    """Read a context file as [C, S] float32 at its own rate; reject empty, non-finite or silent audio."""
    x, sr = audio_files.read_audio(path)
    audio_files.check_finite(x, f"context {path}")
    if x.shape[1] < MIN_SECONDS * sr:
        raise GenerateError(f"context {path} is {x.shape[1] / sr:.3f} s long: give at least {MIN_SECONDS:g} s")
    peak = float(np.abs(x).max())
    if peak < SILENCE_PEAK:
        raise GenerateError(f"context {path} is silent (peak {20 * np.log10(max(peak, 1e-12)):.0f} dBFS): "
                            f"give a recording with some music in it")
    return x, sr


def instrument_ids(names: list[str]) -> list[int]:
    """Map user spellings to INSTRUMENTS ids (ValueError listing the valid names otherwise)."""
    return [instrument_id(n) for n in names]


def check_trained(instruments: list[int], trained: dict[str, int] | None, checkpoint: str) -> None:
    """Refuse a class the checkpoint never trained on: its embedding is still at its random start."""
    if trained is None:
        print(f"note: {checkpoint} does not record which classes it trained on (an older checkpoint)",
              file=sys.stderr)
        return
    untrained = [INSTRUMENTS[i] for i in instruments if INSTRUMENTS[i] not in trained]
    if untrained:
        raise GenerateError(f"{checkpoint} never trained on {', '.join(untrained)}; it trained on: " +
                            ", ".join(f"{name.lower()} ({n})" for name, n in trained.items()))


def instrument_slug(iid: int) -> str:
    """File-name form of an instrument class: "Strings (continued)" -> "strings-continued"."""
    name = INSTRUMENTS[iid].lower()
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def generate_stems(net, tok, context: np.ndarray, instruments: list[int], sampling: decode.Sampling, window: int,
                   overlap: int, generator: torch.Generator | None = None, progress: bool = False,
                   on_step: decode.OnStep | None = None) -> list[np.ndarray]:
    """Stems one after another, each added to the context before the next (the paper's Sec. 1 workflow).

    Args:
        context: float [S] mono audio at tok.sample_rate.
        instruments: instrument ids (INSTRUMENTS), generated in this order.
        window, overlap: in codec frames (decode.window_frames).
        on_step: also called with 1 after every decoding step (the page's progress), as the bar is.
    Returns:
        one float32 [S] array per instrument, at tok.sample_rate, sample-aligned with the context.
    """
    n_frames = math.ceil(context.shape[-1] * tok.frame_rate / tok.sample_rate)
    n_steps = decode.planned_steps(sampling, decode.plan_windows(n_frames, window, overlap)) * len(instruments)
    mix, stems = np.asarray(context, dtype=np.float32), []
    with tqdm(total=n_steps, desc="decoding", unit="step", disable=not progress) as bar:
        step = bar.update if on_step is None else (lambda n: (bar.update(n), on_step(n)))
        for iid in instruments:
            stems.append(decode.generate_stem(net, tok, mix, iid, sampling, window, overlap, generator, step))
            mix = mix + stems[-1]
    return stems


def output_extension(context_path: str) -> str:
    """The context's own file type for the outputs (mix.flac -> .flac), or .wav where soundfile cannot write it."""
    ext = os.path.splitext(context_path)[1]
    return ext if ext.lstrip(".").upper() in sf.available_formats() else ".wav"


def default_out_paths(context_path: str, instruments: list[int]) -> list[str]:
    """Stem paths next to the context: mix.wav + piano -> mix.piano.wav (a repeated class gets .2, .3...)."""
    base, ext = os.path.splitext(context_path)[0], output_extension(context_path)
    slugs = [instrument_slug(i) for i in instruments]
    paths = []
    for k, s in enumerate(slugs):
        repeat = slugs[:k].count(s)
        paths.append(f"{base}.{s}{'.' + str(repeat + 1) if repeat else ''}{ext}")
    return paths


def default_mix_path(context_path: str, instruments: list[int]) -> str:
    """The new mix next to the context: mix.wav + bass, drums -> mix.with-bass-drums.wav."""
    base, ext = os.path.splitext(context_path)[0], output_extension(context_path)
    return f"{base}.with-{'-'.join(instrument_slug(i) for i in instruments)}{ext}"


def check_outputs(paths: list[str], context_path: str, force: bool, audio_files_too: int | None = None) -> None:
    """Fail before any work if outputs collide (also through links), would replace the context, are folders, lie
    in a folder that is missing or not writable, exist (without --force), or (the first `audio_files_too`, all by
    default) have a file type soundfile cannot write."""
    formats, seen = sf.available_formats(), {}
    context = os.path.realpath(context_path)
    for k, p in enumerate(paths):
        real = os.path.realpath(p)
        if real in seen:
            raise GenerateError(f"two outputs would both be written to {p} ({seen[real]} and {p}): give distinct "
                                f"--out/--mix paths (the MIDI files take the stems' names with .mid)")
        seen[real] = p
        if real == context or (os.path.exists(p) and os.path.samefile(p, context_path)):
            raise GenerateError(f"output {p} is the context file itself: choose another --out/--mix path")
        if os.path.isdir(p):
            raise GenerateError(f"output {p} is a folder: give a file name")
        folder = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(folder):
            raise GenerateError(f"cannot write {p}: the folder {folder} does not exist (make it first)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise GenerateError(f"cannot write {p}: the folder {folder} is not writable")
        ext = os.path.splitext(p)[1].lstrip(".").upper()
        if (audio_files_too is None or k < audio_files_too) and ext not in formats:
            raise GenerateError(f"cannot write {p}: unknown audio file type {ext or '(none)'!r} "
                                f"(use .wav or .flac)")
        if os.path.exists(p) and not force:
            raise GenerateError(f"output exists: {p} (pass --force to overwrite)")


def midi_paths(stem_paths: list[str]) -> list[str]:
    """The MIDI file beside each stem: mix.bass.wav -> mix.bass.mid."""
    return [os.path.splitext(p)[0] + ".mid" for p in stem_paths]


def write_outputs(outputs: list[tuple[str, np.ndarray]], sample_rate: int, subtype: str, force: bool, say,
                  files: list[tuple[str, object, str]] = ()) -> None:
    """Write every (path, [S] or [C, S] audio) in the context's sample format, and every (path, write(tmp),
    suffix) of `files`, all or none (audio_files.write_together): a failure is one line and leaves no file."""
    peak = max(float(np.abs(y).max()) for _, y in outputs)
    if peak > 1.0:  # integer wav/flac would clip: scale every output alike, so stems still sum to the mix
        gain = 0.99 / peak
        outputs = [(p, y * gain) for p, y in outputs]
        print(f"note: every output scaled by {20 * np.log10(gain):.1f} dB so that none clips "
              f"(peak was {peak:.2f})", file=sys.stderr)
    items = [(p, audio_files.audio_writer(y.astype(np.float32), sample_rate, subtype, p),
              os.path.splitext(p)[1] or ".wav") for p, y in outputs] + list(files)
    for p, _, _ in items:
        if os.path.exists(p) and not force:
            raise GenerateError(f"output exists: {p} (pass --force to overwrite)")
    try:
        audio_files.write_together(items)
    except OSError as e:
        raise GenerateError(f"cannot write {e.filename or 'the outputs'}: {e.strerror or e}; no output was "
                            f"written") from None
    for p, _, _ in items:
        say(f"wrote {p}")


# ---------------------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Generate stems that fit a musical context (StemGen, Sec. 2.1.1-2.1.2). Writes each "
                    "stem, and with --mix (or several --instrument) the context plus the new stems, at the "
                    "input's sample rate and length.")
    p.add_argument("--context", metavar="PATH",
                   help="context mix (wav/flac, any rate, any number of channels, any length)")
    p.add_argument("--example", action="store_true",
                   help=f"add a part to the built-in example instead of --context: {EXAMPLE_TEXT} (default "
                        f"--instrument bass; outputs in {EXAMPLE_OUT}/, replaced on each run)")
    p.add_argument("--instrument", action="append", metavar="NAME",
                   help="instrument class of the stem (one of the 17 Slakh classes, case-insensitive, e.g. "
                        "piano, bass, drums, 'synth lead'; 'synth effects' is GM programs 96-103, which Slakh "
                        "labels 'Sound Effects', and 'sound effects' is programs 119-127); the checkpoint must "
                        "have trained on it; repeat to make several stems in turn")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="model checkpoint written by train.py or training.ship (default: the shipped model "
                        "checkpoints/stemgen-music.pt)")
    p.add_argument("--out", action="append", metavar="PATH",
                   help="stem output path, one per --instrument (default: CONTEXT.INSTRUMENT.EXT, EXT being the "
                        "context's file type)")
    p.add_argument("--mix", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the context plus the new stem(s) (default path: "
                        "CONTEXT.with-INSTRUMENTS.EXT); always written with several --instrument")
    p.add_argument("--midi", action="store_true",
                   help="also write each stem's notes as a MIDI file beside it (STEM.mid), transcribed with "
                        "notes/transcriber.py, at the context's tempo when one is detected (else 120 BPM), with the "
                        "instrument class's first GM program; and those notes played with that program through the "
                        "General MIDI SoundFont (STEM.notes.EXT, sample-aligned with the context), and the context "
                        "with them (CONTEXT.with-INSTRUMENTS.notes.EXT)")
    p.add_argument("--plot", action="store_true",
                   help="also draw the context's pitch classes over time with each new part's strongest one on them "
                        "(and, with --example, the real bass's) to the first stem's name with .harmony.png")
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


def example_args(args) -> None:
    """--example: the built-in context, a bass unless told otherwise, outputs in EXAMPLE_OUT (ours to replace)."""
    if args.context:
        raise GenerateError("give --context or --example, not both")
    args.instrument = args.instrument or ["bass"]
    names = [os.path.join(EXAMPLE_OUT, os.path.basename(p))
             for p in default_out_paths(EXAMPLE, instrument_ids(args.instrument))]
    args.out = args.out or names
    if args.mix in (None, ""):
        args.mix = os.path.join(EXAMPLE_OUT, os.path.basename(default_mix_path(EXAMPLE, instrument_ids(args.instrument))))
    os.makedirs(EXAMPLE_OUT, exist_ok=True)
    args.force = args.force or (args.out == names)
    args.context = EXAMPLE


def output_plan(args) -> tuple[list[int], list[str], str | None]:
    """Instrument ids, stem paths and mix path (None: no mix) from the flags, checked before any work."""
    if args.example:
        example_args(args)
    if not args.context or not args.instrument:
        raise GenerateError("give --context PATH and --instrument NAME (or --example to try the built-in one)")
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
    audio = outs + ([mix_path] if mix_path else [])
    if args.midi:
        audio += notes_paths(outs, mix_path or default_mix_path(args.context, instruments))
        transcriber.check_transcriber()                    # its install command now, not after the generation
    check_outputs(audio + (midi_paths(outs) if args.midi else []) + ([plot_path(outs)] if args.plot else []),
                  args.context, args.force, len(audio))
    return instruments, outs, mix_path


def plot_path(stem_paths: list[str]) -> str:
    """--plot's picture beside the first stem: mix.bass.wav -> mix.bass.harmony.png."""
    return os.path.splitext(stem_paths[0])[0] + ".harmony.png"


def harmony_picture(path: str, context: np.ndarray, stems: list[np.ndarray], names: list[str], sr: int,
                    real: np.ndarray | None):
    """(path, write(tmp), suffix) of --plot's picture: the context and each stem made for it (pictures.py)."""
    from metrics import pictures    # matplotlib loads only for --plot
    parts = [{"label": f"new {name}", "context": context + sum(stems[:k], np.zeros_like(context)),
              "parts": {**({"real": real} if real is not None and name == "bass" else {}), "generated": stem}}
             for k, (stem, name) in enumerate(zip(stems, names))]
    return path, lambda tmp: pictures.plot_harmony(tmp, parts, sr), ".png"


def notes_paths(stem_paths: list[str], mix_path: str) -> list[str]:
    """With --midi: each stem's notes played through the SoundFont (mix.bass.wav -> mix.bass.notes.wav), then
    the context with them (mix.with-bass.wav -> mix.with-bass.notes.wav)."""
    return [os.path.splitext(p)[0] + ".notes" + os.path.splitext(p)[1] for p in stem_paths + [mix_path]]


NEXT_STEPS = ("\nnext: your own music: python generate.py --context YOUR_MIX.wav --instrument bass\n"
              "      a page to do it in the browser: python app.py\n"
              "      train the demo model yourself (CPU, 13-40 min): python train.py")


def warn_if_long(planned: int):
    """Said even under --quiet: the user may not want to wait."""
    if planned > LONG_JOB_STEPS:
        print(f"note: a long job: {planned} decoding steps planned, about {planned / STEPS_PER_SECOND / 60:.0f} min "
              f"at the shipped model's pace on 2 CPU cores ({STEPS_PER_SECOND:g} steps/s); Ctrl-C stops it and "
              f"writes nothing", file=sys.stderr)


def run(args) -> list[str]:
    """The CLI's work once arguments are parsed; returns the paths written."""
    resolve_sampling(args)                                                    # bad flag values fail before any work
    instruments, outs, mix_path = output_plan(args)
    x, sr = read_context(args.context)                                        # [C, S] at the file's rate
    subtype = audio_files.audio_format(args.context)[1]                       # e.g. PCM_24: kept in the outputs
    device = pick_device(args.device)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if args.checkpoint is None:
        args.checkpoint, why = default_checkpoint()
        say(f"checkpoint: {args.checkpoint} ({why}; --checkpoint chooses another)")
    else:
        say(f"checkpoint: {args.checkpoint}")
    net, tok, ckpt = load_model(args.checkpoint, device, args.codec_weights)
    check_trained(instruments, trained_classes(ckpt), args.checkpoint)
    recommended = recommended_sampling(ckpt)
    sampling, line = resolve_sampling(args, recommended)
    if line:
        say(line)
    if len(sampling.steps) != net.cfg.n_q:
        raise GenerateError(f"--steps gives {len(sampling.steps)} values but the model has {net.cfg.n_q} "
                            f"token levels: give one per level")
    window_seconds = args.window if args.window is not None else checkpoint_window_seconds(ckpt)
    window, overlap = decode.window_frames(tok.frame_rate, net.cfg.max_len, window_seconds, args.overlap)
    if args.compile:
        net = torch.compile(net, mode="reduce-overhead")   # fixed window shapes: one CUDA graph per level

    n_frames = math.ceil(x.shape[1] * tok.frame_rate / sr)
    planned = decode.planned_steps(sampling, decode.plan_windows(n_frames, window, overlap)) * len(instruments)
    warn_if_long(planned)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    say(f"seed {seed}; {', '.join(INSTRUMENTS[i] for i in instruments)} for {args.context} "
        f"({x.shape[1] / sr:.1f} s, {sr} Hz, {x.shape[0]} ch) on {device}")
    generator = torch.Generator(device=device).manual_seed(seed)
    context = audio_files.resample(audio_files.to_mono(x), sr, tok.sample_rate)           # [S'] at the codec rate
    stems = generate_stems(net, tok, context, instruments, sampling, window, overlap, generator, not args.quiet)
    stems = [audio_files.fit_length(audio_files.resample(s, tok.sample_rate, sr), x.shape[1]) for s in stems]  # [S] each

    outputs = list(zip(outs, stems))
    if mix_path:
        outputs.append((mix_path, x + sum(stems)[None, :]))                  # [C, S]
    files = []
    if args.midi:                                  # transcribed before anything is written, so all land or none
        files = midi_files(outs, mix_path or default_mix_path(args.context, instruments), stems, instruments, x,
                           sr, subtype, say)
    mono, names = audio_files.to_mono(x), [INSTRUMENTS[i].lower() for i in instruments]
    if args.plot:
        real = audio_files.load_mono(EXAMPLE_BASS, sr) if args.context == EXAMPLE else None
        files.append(harmony_picture(plot_path(outs), mono, stems, names, sr, real))
    write_outputs(outputs, sr, subtype, args.force, say, files)
    written = [p for p, _ in outputs] + [p for p, _, _ in files]
    for k, stem in enumerate(stems):                # each stem against the mix it was made for
        print(harmony.fit_line(names[k], harmony.fit(stem, mono + sum(stems[:k], np.zeros_like(mono)), sr)))
    if args.example and not args.quiet:
        print(NEXT_STEPS, file=sys.stderr)
    return written


def midi_files(outs: list[str], mix_path: str, stems: list[np.ndarray], instruments: list[int], context: np.ndarray,
               sr: int, subtype: str, say) -> list[tuple[str, object, str]]:
    """(path, write(tmp), suffix) of each stem's notes as MIDI (notes/midi.py, at the context's tempo when it has a
    steady one), of those notes played with the class's GM program through the SoundFont (sample-aligned with the
    context), and of the context with them."""
    from notes import midi   # librosa and pretty_midi load only for --midi
    tempo = midi.detect_tempo(context, sr)
    say(f"MIDI at the context's tempo, {tempo:.1f} BPM" if tempo else
        f"no steady tempo in the context: MIDI at {midi.DEFAULT_TEMPO:g} BPM")
    scores = [midi.instrument_midi(stem, sr, iid, tempo) for stem, iid in zip(stems, instruments)]
    played = [midi.render_notes(pm, sr, context.shape[-1]) for pm in scores]
    heard = list(zip(notes_paths(outs, mix_path), played + [context + sum(played)[None, :]]))
    peak = max(float(np.abs(y).max()) for _, y in heard)
    gain = 0.99 / peak if peak > 1.0 else 1.0                # as write_outputs: the notes and their mix alike
    say("the .notes files are the transcribed notes played through the SoundFont; the stems are what StemGen "
        "generated")
    return ([(path, pm.write, ".mid") for path, pm in zip(midi_paths(outs), scores)] +
            [(path, audio_files.audio_writer((y * gain).astype(np.float32), sr, subtype, path),
              os.path.splitext(path)[1] or ".wav") for path, y in heard])


def stop_on_sigterm(*_):
    raise KeyboardInterrupt   # as Ctrl-C: the temporary files are removed and nothing half-written is left


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, stop_on_sigterm) if main_thread else None
    try:
        run(args)
    except (GenerateError, audio_files.AudioError, codec_lib.CodecUnavailable, transcriber.TranscriberUnavailable,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    except audio_files.WrittenThenInterrupted:
        print("interrupted just after every output was written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
