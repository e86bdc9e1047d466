"""Notes played through a General MIDI SoundFont (tinysoundfont): how the built-in data is rendered (songs/) and
how a generated stem's transcribed notes are heard (generate.py --midi). The default SoundFont is the TimGM6mb.sf2
that ships inside pretty_midi."""
from __future__ import annotations

import os

import numpy as np
import pretty_midi

SOUNDFONT = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")

_SF_CACHE: dict[str, bytes] = {}


def _soundfont_bytes(path: str) -> bytes:
    if path not in _SF_CACHE:
        with open(path, "rb") as f:
            _SF_CACHE[path] = f.read()
    return _SF_CACHE[path]


def render_part(notes, program: int, is_drum: bool, n_samples: int, sample_rate: int, soundfont: str,
                controls=()) -> np.ndarray:
    """Synthesise one MIDI part with a GM SoundFont: notes (start_s, end_s, pitch, vel) -> mono [n_samples].

    `controls` holds optional (time_s, kind, a, b) events: kind "cc" (controller a = value b) or "bend" (a).
    """
    import tinysoundfont  # imported here: only rendering needs it

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(_soundfont_bytes(soundfont))
    chan = 9 if is_drum else 0
    try:
        synth.program_select(chan, sfid, 0, 0 if is_drum else int(program), is_drums=is_drum)
    except RuntimeError:
        synth.program_select(chan, sfid, 0, 0, is_drums=is_drum)  # a bank without this preset: its first one
    events = []  # (sample, order, kind, a, b); note-offs before note-ons at the same sample
    for s, e, p, v in notes:
        events.append((int(round(s * sample_rate)), 1, "on", int(p), int(v)))
        events.append((int(round(e * sample_rate)), 0, "off", int(p), 0))
    for t, kind, a, b in controls:
        events.append((int(round(t * sample_rate)), 0, kind, int(a), int(b)))
    events.sort(key=lambda ev: (ev[0], ev[1]))
    out = np.zeros((n_samples, 2), np.float32)
    pos = 0
    for at, _, kind, a, b in events + [(n_samples, 0, "end", 0, 0)]:
        at = min(at, n_samples)
        if at > pos:
            out[pos:at] = np.frombuffer(synth.generate_simple(at - pos), np.float32).reshape(-1, 2)
            pos = at
        if kind == "on":
            synth.noteon(chan, a, b)
        elif kind == "off":
            synth.noteoff(chan, a)
        elif kind == "cc":
            synth.control_change(chan, a, b)
        elif kind == "bend":
            synth.pitchbend(chan, a)
        if pos >= n_samples:
            break
    return out.mean(axis=1)
