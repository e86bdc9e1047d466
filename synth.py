"""The built-in dataset, made the way Slakh2100 was made: MIDI parts rendered with sample-based instruments.

A small symbolic composer writes each song from one shared plan (key, tempo, time signature, chord
progressions, a form of repeating sections); every part (drums, bass, comping, strums, arpeggios, pads,
lead and counter melodies, brass stabs, pitched percussion) is written as MIDI notes from that plan, so
the stems are musically related the way real stems are. Each part is rendered with a General MIDI
SoundFont (pretty_midi's TimGM6mb.sf2 by default, `--soundfont` for any other GM bank) through
tinysoundfont, and the song is written in the Slakh layout that data.py reads:

    OUT/{train,validation,test}/TrackNNNNN/{metadata.yaml, all_src.mid, MIDI/SNN.mid, stems/SNN.flac, mix.flac}

`--midi DIR` renders the user's own multi-track MIDI files (e.g. Lakh MIDI, as Slakh did) the same way.
Everything is deterministic for a given seed; songs are rendered in parallel processes.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pretty_midi
import soundfile as sf
import yaml
from tqdm import tqdm

from data import INSTRUMENTS

SOUNDFONT = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
MARKER = "synth.yaml"  # written at the dataset root; marks a folder this script may replace with overwrite=True
DEFAULT_TRACKS = 80
DEFAULT_SECONDS = 40.0
DEFAULT_SAMPLE_RATE = 32000


class SynthError(ValueError):
    """A user-facing problem making a dataset (output folder exists, no SoundFont, no MIDI files, ...)."""


def program_class(program: int, is_drum: bool) -> str:
    """Slakh's inst_class of a GM program: its GM family, Drums for drum tracks.

    Slakh labels the GM "Synth Effects" family (programs 96-103) "Sound Effects" (the fixture's
    program-103 stem says so); we follow the data.
    """
    if is_drum:
        return "Drums"
    family = INSTRUMENTS[int(program) // 8]
    return "Sound Effects" if family == "Synth Effects" else family


# ------------------------------------------------------------------------------------------ the plan

MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar
    "major": [[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 0], [5, 3, 0, 4], [0, 3, 5, 4], [3, 4, 0, 0], [0, 1, 4, 0]],
    "minor": [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 6], [0, 3, 6, 2], [0, 5, 3, 4], [5, 6, 0, 0]],
}
FORMS = [["A", "A", "B", "A"], ["A", "B", "A", "B"], ["A", "B", "C", "B"], ["A", "A", "B", "B"], ["A", "B", "B", "A"]]


@dataclass
class Plan:
    """What all parts of one song share."""
    tonic: int  # pitch class 0-11
    mode: str  # "major" | "minor"
    tempo: float  # quarter notes per minute
    beats: int  # beats per bar (3 or 4), quarter-note beats
    bars: int  # bars per section
    chords: dict  # section name -> list of scale degrees, one per bar
    form: list  # section names, repeated to the song's length

    @property
    def scale(self) -> list[int]:
        return [(self.tonic + s) % 12 for s in (MAJOR if self.mode == "major" else MINOR)]

    def chord(self, degree: int, size: int = 3) -> list[int]:
        """Pitch classes of the diatonic chord on a scale degree (triad, or seventh chord with size 4)."""
        return [self.scale[(degree + 2 * k) % 7] for k in range(size)]

    @property
    def key_number(self) -> int:
        """pretty_midi key number: 0-11 major, 12-23 minor."""
        return self.tonic + (0 if self.mode == "major" else 12)


def make_plan(rng: np.random.Generator) -> Plan:
    """Draw a song's key, tempo, metre, chord progressions and form."""
    mode = "major" if rng.random() < 0.6 else "minor"
    form = list(FORMS[rng.integers(len(FORMS))])
    progs = PROGRESSIONS[mode]
    picks = rng.permutation(len(progs))
    chords = {name: progs[picks[k % len(progs)]] for k, name in enumerate(sorted(set(form)))}
    bars = 4 if rng.random() < 0.5 else 8
    chords = {k: (v * (bars // 4)) for k, v in chords.items()}
    return Plan(tonic=int(rng.integers(12)), mode=mode, tempo=float(rng.integers(80, 151)),
                beats=3 if rng.random() < 0.15 else 4, bars=bars, chords=chords, form=form)


# ------------------------------------------------------------------------------------------- parts
# A part writes the notes of one section once (in beats from the section start) and the song repeats
# them wherever the section comes back; this gives the form. Notes: (start_beat, dur_beats, pitch, vel).

CLASS_PARTS = {  # inst_class -> (roles it can play, GM programs to draw from)
    "Piano": (["comp"], [0, 1, 2, 4, 5, 6, 7]),
    "Chromatic Percussion": (["arp"], [8, 9, 10, 11, 12, 13, 14]),
    "Organ": (["comp", "pad"], [16, 17, 18, 19, 20, 21, 22]),
    "Guitar": (["strum", "arp"], [24, 25, 26, 27, 28, 29, 30]),
    "Bass": (["bass"], [32, 33, 34, 35, 36, 37, 38, 39]),
    "Strings": (["counter", "arp"], [40, 41, 42, 45, 46]),
    "Strings (continued)": (["pad"], [48, 49, 50, 51, 52, 53, 54]),
    "Brass": (["stabs", "lead"], [56, 57, 58, 60, 61, 62, 63]),
    "Reed": (["lead", "counter"], [64, 65, 66, 67, 68, 71]),
    "Pipe": (["lead", "counter"], [72, 73, 74, 75, 79]),
    "Synth Lead": (["lead"], [80, 81, 82, 83, 84, 85, 86, 87]),
    "Synth Pad": (["pad"], [88, 89, 90, 91, 92, 93, 94, 95]),
    "Sound Effects": (["pad"], [97, 98, 99, 100]),  # GM "Synth Effects" programs, Slakh's label
    "Ethnic": (["arp"], [104, 105, 106, 107, 108]),
    "Percussive": (["perc"], [112, 113, 114, 115, 116, 117]),
}
REGISTER = {"bass": 36, "comp": 60, "strum": 52, "arp": 60, "pad": 55, "lead": 72, "counter": 62,
            "stabs": 60, "perc": 60}  # lowest MIDI note of each role's usual range


def _place(pc: int, low: int) -> int:
    """The lowest MIDI pitch with pitch class pc at or above `low`."""
    return low + (pc - low) % 12


def _voicing(plan: Plan, degree: int, low: int, size: int) -> list[int]:
    """A close voicing of a chord starting at or above `low`."""
    return sorted(_place(pc, low) for pc in plan.chord(degree, size))


def _rhythm(rng: np.random.Generator, beats: int, density: float) -> list[tuple[float, float]]:
    """A one-bar rhythm on the eighth-note grid: (onset, duration) in beats, always with a downbeat."""
    grid = [k / 2 for k in range(beats * 2)]
    on = [0.0] + [g for g in grid[1:] if rng.random() < density * (1.0 if g == int(g) else 0.6)]
    return [(a, (on[k + 1] if k + 1 < len(on) else beats) - a) for k, a in enumerate(on)]


def part_bass(plan, chords, rng, low, vel):
    style = rng.integers(4)
    notes = []
    for bar, deg in enumerate(chords):
        t0, root = bar * plan.beats, _place(plan.chord(deg)[0], low)
        fifth = _place(plan.chord(deg)[2], root)
        if style == 0:  # whole notes
            notes.append((t0, plan.beats * 0.95, root, vel))
        elif style == 1:  # quarter notes
            notes += [(t0 + b, 0.9, root, vel - 8 * (b > 0)) for b in range(plan.beats)]
        elif style == 2:  # eighth-note pulse
            notes += [(t0 + b / 2, 0.45, root, vel - 10 * (b % 2)) for b in range(plan.beats * 2)]
        else:  # root - fifth with a scale step leading into the next bar
            notes += [(t0, 1.4, root, vel), (t0 + 1.5, 1.0, fifth, vel - 10)]
            if plan.beats == 4:
                step = _place(plan.scale[(plan.scale.index(plan.chord(deg)[0]) + 1) % 7], low)
                notes.append((t0 + 3, 0.9, step, vel - 15))
    return notes


def part_comp(plan, chords, rng, low, vel):
    size = 4 if rng.random() < 0.4 else 3
    rhythm = _rhythm(rng, plan.beats, rng.uniform(0.2, 0.7))
    notes = []
    for bar, deg in enumerate(chords):
        for a, d in rhythm:
            notes += [(bar * plan.beats + a, d * 0.9, p, vel - 5 * k) for k, p in enumerate(_voicing(plan, deg, low, size))]
    return notes


def part_strum(plan, chords, rng, low, vel):
    rhythm = _rhythm(rng, plan.beats, rng.uniform(0.4, 0.9))
    spread = plan.tempo / 60 * 0.012  # 12 ms between strings, in beats
    notes = []
    for bar, deg in enumerate(chords):
        pitches = _voicing(plan, deg, low, 3) + _voicing(plan, deg, low + 12, 3)
        for k, (a, d) in enumerate(rhythm):
            order = pitches if k % 2 == 0 else pitches[::-1]  # down and up strokes
            notes += [(bar * plan.beats + a + j * spread, d * 0.9, p, vel - (8 if k % 2 else 0)) for j, p in enumerate(order)]
    return notes


def part_arp(plan, chords, rng, low, vel):
    step = 0.5
    shape = rng.integers(3)
    notes = []
    for bar, deg in enumerate(chords):
        tones = _voicing(plan, deg, low, 3) + _voicing(plan, deg, low + 12, 3)
        seq = tones if shape == 0 else tones[::-1] if shape == 1 else tones + tones[-2:0:-1]
        for k in range(int(plan.beats / step)):
            notes.append((bar * plan.beats + k * step, step * 0.95, seq[k % len(seq)], vel - 10 * (k % 2)))
    return notes


def part_pad(plan, chords, rng, low, vel):
    size = 4 if rng.random() < 0.3 else 3
    return [(bar * plan.beats, plan.beats * 0.98, p, vel) for bar, deg in enumerate(chords)
            for p in _voicing(plan, deg, low, size)]


def _melody(plan, chords, rng, low, vel, density, long_notes):
    """A two-bar motif repeated with variation: chord tones on beats, scale steps between (Sec. ours)."""
    scale_pitches = [p for p in range(low, low + 20) if p % 12 in plan.scale]
    motif = _rhythm(rng, plan.beats, density) + [(plan.beats + a, d) for a, d in _rhythm(rng, plan.beats, density)]
    if long_notes:
        motif = [(a, d) for a, d in motif if a == int(a)]
    idx = int(rng.integers(len(scale_pitches) // 3, 2 * len(scale_pitches) // 3))
    notes = []
    for bar0 in range(0, len(chords), 2):
        for a, d in motif:
            bar = bar0 + int(a // plan.beats)
            if bar >= len(chords):
                break
            pcs = plan.chord(chords[bar])
            idx = int(np.clip(idx + rng.choice([-2, -1, -1, 1, 1, 2]), 0, len(scale_pitches) - 1))
            if a == int(a):  # on the beat: move to the nearest chord tone
                near = [k for k, p in enumerate(scale_pitches) if p % 12 in pcs]
                idx = min(near, key=lambda k: abs(k - idx))
            notes.append((bar0 * plan.beats + a, d * 0.92, scale_pitches[idx], vel + int(rng.integers(-8, 9))))
    return notes


def part_lead(plan, chords, rng, low, vel):
    return _melody(plan, chords, rng, low, vel, rng.uniform(0.4, 0.8), long_notes=False)


def part_counter(plan, chords, rng, low, vel):
    return _melody(plan, chords, rng, low, vel, rng.uniform(0.3, 0.6), long_notes=True)


def part_stabs(plan, chords, rng, low, vel):
    hits = [a for a, _ in _rhythm(rng, plan.beats, 0.35)]
    return [(bar * plan.beats + a, 0.3, p, vel) for bar, deg in enumerate(chords) for a in hits
            for p in _voicing(plan, deg, low, 3)]


def part_perc(plan, chords, rng, low, vel):
    hits = _rhythm(rng, plan.beats, 0.6)
    return [(bar * plan.beats + a, min(d, 0.5), _place(plan.chord(deg)[k % 2 * 2], low), vel - 6 * (k % 2))
            for bar, deg in enumerate(chords) for k, (a, d) in enumerate(hits)]


KICK, SNARE, HAT, OPEN_HAT, RIDE, CRASH, TOMS = 36, 38, 42, 46, 51, 49, (50, 48, 47, 45)


def part_drums(plan, bars, rng, vel):
    """A GM-percussion groove for one section (kick, snare/backbeat, hats or ride)."""
    cymbal = RIDE if rng.random() < 0.3 else HAT
    hat_step = 0.25 if rng.random() < 0.3 else 0.5
    kicks = [0.0] + ([2.0] if plan.beats == 4 else []) + [a for a in (1.5, 2.5, 3.5) if a < plan.beats and rng.random() < 0.3]
    snares = [1.0, 3.0] if plan.beats == 4 else [1.0, 2.0]
    notes = [(0.0, 0.5, CRASH, vel)]
    for bar in range(bars):
        t0 = bar * plan.beats
        notes += [(t0 + a, 0.25, KICK, vel) for a in kicks]
        notes += [(t0 + a, 0.25, SNARE, vel - 5) for a in snares]
        notes += [(t0 + k * hat_step, 0.2, cymbal, vel - 25 + 12 * (k * hat_step == int(k * hat_step)))
                  for k in range(int(plan.beats / hat_step))]
    return notes


def drum_fill(plan, start_beat, rng, vel):
    """A tom/snare fill over the last beat(s) of a section, ahead of the next one."""
    n = 8 if rng.random() < 0.5 else 4
    return [(start_beat + plan.beats - n * 0.25 + k * 0.25, 0.2, TOMS[min(3, k * 4 // n)] if rng.random() < 0.7 else SNARE,
             vel - 10 + 2 * k) for k in range(n)]


PART_WRITERS = {"bass": part_bass, "comp": part_comp, "strum": part_strum, "arp": part_arp, "pad": part_pad,
                "lead": part_lead, "counter": part_counter, "stabs": part_stabs, "perc": part_perc}


@dataclass
class Part:
    inst_class: str
    program: int  # GM program 0-127 (drums: 0, the standard kit)
    is_drum: bool
    role: str
    notes: list  # (start_s, end_s, pitch, velocity)
    gain_db: float = 0.0
    source: int = -1  # index of the instrument in the user's MIDI file (--midi), else -1


def choose_band(rng: np.random.Generator, one_program: bool = False) -> list[tuple[str, str, int]]:
    """Drums, bass and 6-9 other Slakh classes, each with a role and a program; at most one lead.

    With one_program every class always plays the first of its programs, so the class fixes the timbre
    (a demo setting: with few songs, a class that stands for one sound is learnt sooner).
    """
    others = [c for c in CLASS_PARTS if c != "Bass"]
    pick = [str(c) for c in rng.choice(others, size=int(rng.integers(6, 10)), replace=False)]
    def program(c):  # the draw is made either way, so the songs are the same apart from their programs
        drawn = int(rng.choice(CLASS_PARTS[c][1]))
        return CLASS_PARTS[c][1][0] if one_program else drawn

    band, have_lead = [("Drums", "drums", 0), ("Bass", "bass", program("Bass"))], False
    for c in sorted(pick, key=lambda c: "lead" not in CLASS_PARTS[c][0]):  # lead-capable classes first
        roles = CLASS_PARTS[c][0]
        roles = [r for r in roles if not (r == "lead" and have_lead)] or ["counter"]
        role = str(rng.choice(roles))
        have_lead |= role == "lead"
        band.append((c, role, program(c)))
    return band


def compose(rng: np.random.Generator, seconds: float, one_program: bool = False) -> tuple[Plan, list[Part]]:
    """Write a song: one plan, then every part from it, sections repeated along the form."""
    plan = make_plan(rng)
    spb = 60.0 / plan.tempo  # seconds per beat
    section_beats = plan.bars * plan.beats
    n_sections = int(np.ceil(seconds / (section_beats * spb)))
    layout = [(plan.form[k % len(plan.form)], k * section_beats) for k in range(n_sections)]
    parts = []
    for inst_class, role, program in choose_band(rng, one_program):
        vel = int(rng.integers(70, 111))
        beats_notes = []
        if role == "drums":
            grooves = {s: part_drums(plan, plan.bars, rng, vel) for s in sorted(set(plan.form))}
            for k, (s, b0) in enumerate(layout):
                beats_notes += [(b0 + a, d, p, v) for a, d, p, v in grooves[s]]
                if k + 1 < len(layout) and rng.random() < 0.7:
                    fill_at = b0 + section_beats - plan.beats
                    beats_notes = [n for n in beats_notes if not (n[0] >= fill_at + plan.beats / 2 and n[2] != KICK)]
                    beats_notes += drum_fill(plan, fill_at, rng, vel)
        else:
            low = REGISTER[role] + int(rng.integers(-3, 4))
            written = {s: PART_WRITERS[role](plan, plan.chords[s], rng, low, vel) for s in sorted(set(plan.form))}
            for s, b0 in layout:
                beats_notes += [(b0 + a, d, p, v) for a, d, p, v in written[s]]
        jitter = 0.0 if role == "drums" else 0.006
        notes = []
        for a, d, p, v in beats_notes:
            t = max(0.0, a * spb + (float(rng.uniform(-jitter, jitter)) if jitter else 0.0))
            if t < seconds - 0.05:
                notes.append((t, min(t + d * spb, seconds), int(np.clip(p, 0, 127)), int(np.clip(v, 1, 127))))
        parts.append(Part(inst_class, program, role == "drums", role, notes, gain_db=float(rng.uniform(-8.0, 0.0))))
    return plan, parts


# ---------------------------------------------------------------------------------------- rendering

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


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.dot(x, x) / x.size)) if x.size else 0.0


def _sum(xs: list[np.ndarray]) -> np.ndarray:
    out = np.zeros_like(xs[0], dtype=np.float32)
    for x in xs:
        out += x
    return out


def _midi_instrument(part: Part) -> pretty_midi.Instrument:
    inst = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum, name=part.inst_class)
    inst.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=max(e, s + 1e-3)) for s, e, p, v in part.notes]
    return inst


def _gm_name(part: Part) -> str:
    return "Drums" if part.is_drum else pretty_midi.program_to_instrument_name(part.program)


def write_track(track_dir: str, parts: list[Part], stems: list[np.ndarray], sample_rate: int, soundfont: str,
                midi: pretty_midi.PrettyMIDI, extra: dict | None = None) -> None:
    """Write one song in the Slakh layout: stems, their sum as mix, MIDI parts and metadata.yaml."""
    os.makedirs(os.path.join(track_dir, "stems"))
    os.makedirs(os.path.join(track_dir, "MIDI"))
    mix = _sum(stems)
    peak = max([float(np.abs(mix).max())] + [float(np.abs(s).max()) for s in stems])
    scale = 0.9 / peak if peak > 0.9 else 1.0  # one factor for all, so the mix stays the sum of the stems
    stems = [(s * scale).astype(np.float32) for s in stems]
    mix = _sum(stems)
    meta_stems = {}
    for k, (part, x) in enumerate(zip(parts, stems)):
        name = f"S{k:02d}"
        sf.write(os.path.join(track_dir, "stems", name + ".flac"), x, sample_rate)
        one = copy.copy(midi)  # shares the song's tempo map, metre and key; holds only this part
        one.instruments = [midi.instruments[part.source] if part.source >= 0 else _midi_instrument(part)]
        one.write(os.path.join(track_dir, "MIDI", name + ".mid"))
        meta_stems[name] = {
            "audio_rendered": True, "inst_class": part.inst_class, "is_drum": part.is_drum,
            "midi_program_name": _gm_name(part), "midi_saved": True,
            "plugin_name": os.path.basename(soundfont), "program_num": 128 if part.is_drum else part.program,
        }
    sf.write(os.path.join(track_dir, "mix.flac"), mix, sample_rate)
    meta = {"UUID": hashlib.md5(track_dir.encode()).hexdigest(), "audio_dir": "stems", "midi_dir": "MIDI",
            "normalized": False, "overall_gain": float(scale), "sample_rate": sample_rate, "stems": meta_stems}
    if extra:
        meta.update(extra)
    with open(os.path.join(track_dir, "metadata.yaml"), "w") as f:
        yaml.safe_dump(meta, f, sort_keys=True)


def render_song(job: tuple) -> tuple[str, int]:
    """Compose, render and write song `index` of a dataset (runs in a worker process)."""
    index, track_dir, seconds, seed, sample_rate, soundfont, one_program = job
    rng = np.random.default_rng([seed, index])
    plan, parts = compose(rng, seconds, one_program)
    n = int(round(seconds * sample_rate))
    stems = []
    for part in parts:
        x = render_part(part.notes, part.program, part.is_drum, n, sample_rate, soundfont)
        r = _rms(x)
        stems.append(x * (10 ** ((-20.0 + part.gain_db) / 20) / r) if r > 0 else x)  # stem level: -28..-20 dBFS RMS
    all_src = pretty_midi.PrettyMIDI(initial_tempo=plan.tempo)
    all_src.time_signature_changes = [pretty_midi.TimeSignature(plan.beats, 4, 0.0)]
    all_src.key_signature_changes = [pretty_midi.KeySignature(plan.key_number, 0.0)]
    all_src.instruments = [_midi_instrument(p) for p in parts]
    song = {"tempo": plan.tempo, "key": pretty_midi.key_number_to_key_name(plan.key_number),
            "time_signature": f"{plan.beats}/4", "form": "".join(plan.form), "seed": int(seed), "index": int(index)}
    write_track(track_dir, parts, stems, sample_rate, soundfont, midi=all_src, extra={"synth": song})
    all_src.write(os.path.join(track_dir, "all_src.mid"))
    return track_dir, len(parts)


# ------------------------------------------------------------------------------------- dataset I/O


def split_sizes(n: int) -> tuple[int, int, int]:
    """80/10/10 train/validation/test, with at least one validation and one test track once n >= 3."""
    if n < 3:
        return n, 0, 0
    k = max(1, int(round(0.1 * n)))
    return n - 2 * k, k, k


def _prepare_out(out_dir: str, overwrite: bool) -> str:
    """Check the output folder and return a fresh temporary folder beside it (renamed into place at the end)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        if not overwrite:
            raise SynthError(f"output folder {out_dir} exists and is not empty; choose another --out or pass "
                             "--overwrite (only a folder this script made is replaced)")
        if not os.path.isfile(os.path.join(out_dir, MARKER)):
            raise SynthError(f"refusing to replace {out_dir}: it has no {MARKER}, so it was not made by synth.py")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".partial-", dir=parent)


def _finish_out(tmp: str, out_dir: str, info: dict) -> None:
    """Write the marker and move the finished dataset into place (replacing an old synth.py dataset)."""
    with open(os.path.join(tmp, MARKER), "w") as f:
        yaml.safe_dump(info, f, sort_keys=True)
    out_dir = os.path.abspath(out_dir)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    if os.path.exists(out_dir):
        old = tmp + ".old"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out_dir)


def _run_jobs(fn, jobs: list, workers: int | None, progress: bool, desc: str) -> list:
    workers = min(workers or os.cpu_count() or 1, len(jobs)) if jobs else 1
    bar = tqdm(total=len(jobs), desc=desc, unit="song", disable=not progress)
    results = []
    try:
        if workers <= 1:
            for j in jobs:
                results.append(fn(j))
                bar.update()
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers) as pool:
                for r in pool.imap_unordered(fn, jobs):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    return results


def _check_soundfont(soundfont: str | None) -> str:
    soundfont = soundfont or SOUNDFONT
    if not os.path.isfile(soundfont):
        raise SynthError(f"SoundFont not found: {soundfont} (pass --soundfont PATH to a GM .sf2 file)")
    try:
        import tinysoundfont  # noqa: F401
    except ImportError:
        raise SynthError("tinysoundfont is not installed: pip install --no-deps tinysoundfont==0.3.7") from None
    return soundfont


def dataset_info(tracks: int, seconds: float, seed: int, sample_rate: int, soundfont: str | None,
                 one_program: bool) -> dict:
    """What synth.yaml records of a composed dataset (train.py compares it with the demo's settings)."""
    return {"tracks": int(tracks), "seconds": float(seconds), "seed": int(seed), "sample_rate": int(sample_rate),
            "soundfont": os.path.basename(soundfont or SOUNDFONT), "one_program_per_class": bool(one_program)}


def read_info(out_dir: str) -> dict | None:
    """The settings a dataset made by make_dataset was made with (its synth.yaml), or None."""
    path = os.path.join(out_dir, MARKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return yaml.safe_load(f)


DEMO_SONGS = dict(tracks=320, seconds=10.0, one_program=True)  # the built-in demo's songs (train.py, README)


def demo_dataset(out_dir: str, seed: int = 0, progress: bool = True) -> str:
    """The demo's songs (DEMO_SONGS: many short songs in all twelve keys, one program per class) at out_dir:
    rendered on first use; a folder made with other settings is refused rather than used silently."""
    if not os.path.isdir(out_dir):
        print(f"rendering the built-in synthetic dataset into {out_dir} ({DEMO_SONGS['tracks']} songs of "
              f"{DEMO_SONGS['seconds']:g} s)", file=sys.stderr)
        return make_dataset(out_dir, seed=seed, progress=progress, **DEMO_SONGS)
    made = read_info(out_dir)
    if made != dataset_info(seed=seed, sample_rate=DEFAULT_SAMPLE_RATE, soundfont=None, **DEMO_SONGS):
        raise SynthError(f"{out_dir} was made with other settings ({made}); delete it to render the demo's "
                         "songs again, or pass --data")
    return out_dir


def make_dataset(out_dir: str, tracks: int = DEFAULT_TRACKS, seconds: float = DEFAULT_SECONDS, seed: int = 0,
                 soundfont: str | None = None, workers: int | None = None, progress: bool = True,
                 sample_rate: int = DEFAULT_SAMPLE_RATE, overwrite: bool = False, one_program: bool = False) -> str:
    """Compose and render `tracks` songs of `seconds` each into a Slakh-layout dataset with 80/10/10 splits.

    Keys are drawn from all twelve tonics (major and minor); `one_program` gives every class one GM program.

    Deterministic for a seed (song i depends only on (seed, i)). The dataset is built in a temporary folder
    and renamed into place, so an interrupted run leaves no half dataset at out_dir. Returns out_dir.
    """
    if tracks < 1 or seconds <= 0:
        raise SynthError("--tracks must be at least 1 and --seconds positive")
    soundfont = _check_soundfont(soundfont)
    tmp = _prepare_out(out_dir, overwrite)
    try:
        n_train, n_val, _ = split_sizes(tracks)
        jobs = []
        for i in range(tracks):
            split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
            jobs.append((i, os.path.join(tmp, split, f"Track{i + 1:05d}"), float(seconds), int(seed), int(sample_rate), soundfont,
                         bool(one_program)))
        _run_jobs(render_song, jobs, workers, progress, "synth")
        _finish_out(tmp, out_dir, dataset_info(tracks, seconds, seed, sample_rate, soundfont, one_program))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ------------------------------------------------------------------------------------ user's MIDI


def midi_parts(pm: pretty_midi.PrettyMIDI, seconds: float) -> list[tuple[Part, list]]:
    """One Part per instrument track that has notes before `seconds`, with its controller events."""
    out = []
    for k, inst in enumerate(pm.instruments):
        notes = [(n.start, min(n.end, seconds), n.pitch, n.velocity) for n in inst.notes if n.start < seconds and n.end > n.start]
        if not notes:
            continue
        controls = [(c.time, "cc", c.number, c.value) for c in inst.control_changes
                    if c.number in (1, 7, 10, 11, 64) and c.time < seconds]
        controls += [(b.time, "bend", b.pitch + 8192, 0) for b in inst.pitch_bends if b.time < seconds]
        part = Part(program_class(inst.program, inst.is_drum), int(inst.program), bool(inst.is_drum), "midi", notes, source=k)
        out.append((part, controls))
    return out


def render_midi_file(job: tuple) -> tuple[str, str | None]:
    """Render one multi-track MIDI file into a Slakh track; returns (path, reason skipped or None)."""
    path, track_dir, max_seconds, sample_rate, soundfont = job
    try:
        pm = pretty_midi.PrettyMIDI(path)
        end = pm.get_end_time()
    except Exception:
        return path, "broken MIDI file"
    seconds = min(end + 1.0, max_seconds) if max_seconds else end + 1.0  # 1 s for the last release
    parts = midi_parts(pm, seconds)
    if not parts:
        return path, "MIDI file without notes"
    n = int(round(seconds * sample_rate))
    stems = [render_part(p.notes, p.program, p.is_drum, n, sample_rate, soundfont, controls) for p, controls in parts]
    write_track(track_dir, [p for p, _ in parts], stems, sample_rate, soundfont, midi=pm,
                extra={"source_midi": os.path.basename(path)})
    shutil.copyfile(path, os.path.join(track_dir, "all_src.mid"))
    return path, None


def render_midi_dir(midi_dir: str, out_dir: str, seconds: float | None = None, soundfont: str | None = None,
                    workers: int | None = None, progress: bool = True, sample_rate: int = DEFAULT_SAMPLE_RATE,
                    overwrite: bool = False) -> tuple[str, Counter]:
    """Render every .mid/.midi file under midi_dir (one song each, one stem per instrument track) into the
    Slakh layout with 80/10/10 splits; empty or broken files are skipped and counted. Returns (out_dir, skips)."""
    if not os.path.isdir(midi_dir):
        raise SynthError(f"MIDI folder not found: {midi_dir}")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(midi_dir) for f in fs
                   if f.lower().endswith((".mid", ".midi")))
    if not files:
        raise SynthError(f"no .mid or .midi files under {midi_dir}")
    soundfont = _check_soundfont(soundfont)
    tmp = _prepare_out(out_dir, overwrite)
    try:
        n_train, n_val, _ = split_sizes(len(files))
        jobs = []
        for i, f in enumerate(files):
            split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
            jobs.append((f, os.path.join(tmp, split, f"Track{i + 1:05d}"), seconds, int(sample_rate), soundfont))
        results = _run_jobs(render_midi_file, jobs, workers, progress, "render")
        skips = Counter(reason for _, reason in results if reason)
        if len(skips) and sum(skips.values()) == len(files):
            raise SynthError(f"no MIDI file under {midi_dir} could be rendered ({dict(skips)})")
        _finish_out(tmp, out_dir, {"midi_dir": os.path.abspath(midi_dir), "files": len(files), "skipped": dict(skips),
                                   "sample_rate": int(sample_rate), "soundfont": os.path.basename(soundfont)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, skips


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description="Make a Slakh-layout stem dataset: compose songs as MIDI parts and render them with a General "
                    "MIDI SoundFont, or (--midi) render your own multi-track MIDI files.")
    p.add_argument("--out", required=True, help="output dataset folder (must not exist or be empty)")
    p.add_argument("--tracks", type=int, default=DEFAULT_TRACKS, help=f"songs to compose (default {DEFAULT_TRACKS})")
    p.add_argument("--seconds", type=float, default=None,
                   help=f"song length in seconds (default {DEFAULT_SECONDS:g}; with --midi: whole files)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    p.add_argument("--midi", default=None, help="render the .mid files under this folder instead of composing")
    p.add_argument("--soundfont", default=None, help="GM SoundFont (.sf2) to render with (default: pretty_midi's TimGM6mb.sf2)")
    p.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE, help="audio rate in Hz (default 32000)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset made by synth.py")
    p.add_argument("--one-program-per-class", action="store_true",
                   help="every instrument class plays one GM program (the demo's setting; default: 5-8 programs each)")
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
        sys.exit(f"synth.py: error: {e}")


if __name__ == "__main__":
    main()
