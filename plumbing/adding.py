"""Adding stems to a context file: what generate.py and the page (app.py) share.

Reading the context (any rate and channel count; empty, non-finite or silent audio refused), checking that the
checkpoint trained on the classes asked for, generating the stems in turn (each added to the context before the
next, as the paper's introduction describes), and naming and writing the outputs in the context's format.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import decode
from decode import Sampling
from plumbing import audio
from plumbing.instruments import INSTRUMENTS, instrument_id

SILENCE_PEAK = 10 ** (-80 / 20)   # a context whose peak is below -80 dBFS is treated as silent


class GenerateError(RuntimeError):
    """A problem the user can fix (bad flag, missing checkpoint, unusable context); one line, no traceback."""


def read_context(path: str) -> tuple[np.ndarray, int]:
    """Read a context file as [C, S] float32 at its own rate; reject empty, non-finite or silent audio."""
    x, sr = audio.read_audio(path)
    audio.check_finite(x, f"context {path}")
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


def generate_stems(net, tok, context: np.ndarray, instruments: list[int], sampling: Sampling, window: int,
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


def check_outputs(paths: list[str], context_path: str, force: bool) -> None:
    """Fail before any work if outputs collide, would replace the context, exist (without --force), or
    have a file type soundfile cannot write."""
    formats = sf.available_formats()
    seen = set()
    for p in paths:
        ap = os.path.abspath(p)
        if ap in seen:
            raise GenerateError(f"two outputs would both be written to {p}: give distinct --out/--mix paths")
        seen.add(ap)
        if ap == os.path.abspath(context_path):
            raise GenerateError(f"output {p} is the context file itself: choose another --out/--mix path")
        ext = os.path.splitext(p)[1].lstrip(".").upper()
        if ext not in formats:
            raise GenerateError(f"cannot write {p}: unknown audio file type {ext or '(none)'!r} "
                                f"(use .wav or .flac)")
        if os.path.exists(p) and not force:
            raise GenerateError(f"output exists: {p} (pass --force to overwrite)")


def midi_paths(stem_paths: list[str]) -> list[str]:
    """The MIDI file beside each stem: mix.bass.wav -> mix.bass.mid."""
    return [os.path.splitext(p)[0] + ".mid" for p in stem_paths]


def write_outputs(outputs: list[tuple[str, np.ndarray]], sample_rate: int, subtype: str, force: bool, say) -> None:
    """Write every (path, [S] or [C, S] audio) atomically, at the end, in the context's sample format."""
    peak = max(float(np.abs(y).max()) for _, y in outputs)
    if peak > 1.0:  # integer wav/flac would clip: scale every output alike, so stems still sum to the mix
        gain = 0.99 / peak
        outputs = [(p, y * gain) for p, y in outputs]
        print(f"note: every output scaled by {20 * np.log10(gain):.1f} dB so that none clips "
              f"(peak was {peak:.2f})", file=sys.stderr)
    for path, y in outputs:
        audio.write_audio(path, y.astype(np.float32), sample_rate, overwrite=force, subtype=subtype)
        say(f"wrote {path}")
