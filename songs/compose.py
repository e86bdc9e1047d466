"""The built-in dataset's songs, composed as MIDI parts from one shared plan (songs/synth.py renders them).

A small symbolic composer writes each song from one shared plan (key, tempo, time signature, chord
progressions, a form of repeating sections); every part (drums, bass, comping, strums, arpeggios, pads,
lead and counter melodies, brass stabs, pitched percussion) is written as MIDI notes from that plan, so
the stems are musically related the way real stems are: they share key, harmony, metre and form, and
each section's notes come back wherever the section does. Each part belongs to one of Slakh's instrument
classes (CLASS_PARTS) and plays a GM program of that class.

compose(rng, seconds) -> (Plan, [Part]) is deterministic for a given generator state; no audio here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ------------------------------------------------------------------------------------------ the plan

MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar
    "major": [[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 0], [5, 3, 0, 4], [0, 3, 5, 4], [3, 4, 0, 0], [0, 1, 4, 0]],
    "minor": [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 6], [0, 3, 6, 2], [0, 5, 3, 4], [5, 6, 0, 0]],
}
# Held-out songs (validation and test) draw only from these, which no training song uses, not even rotated or
# in the relative key (a test checks): what a held-out song shows is following a progression the model has not
# heard, not recalling one it has.
HELD_OUT_PROGRESSIONS = {
    "major": [[0, 2, 3, 4], [0, 2, 5, 3], [0, 3, 1, 4]],
    "minor": [[0, 2, 6, 3], [0, 4, 5, 3], [0, 6, 3, 4]],
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


def make_plan(rng: np.random.Generator, held_out: bool = False) -> Plan:
    """Draw a song's key, tempo, metre, chord progressions (HELD_OUT_PROGRESSIONS for a held-out song) and form."""
    mode = "major" if rng.random() < 0.6 else "minor"
    form = list(FORMS[rng.integers(len(FORMS))])
    progs = (HELD_OUT_PROGRESSIONS if held_out else PROGRESSIONS)[mode]
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
    "Synth Effects": (["pad"], [97, 98, 99, 100]),  # GM's FX 2-5; Slakh labels the family "Sound Effects"
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
    """One instrument's notes, rendered into one stem (composed here, or read from the user's MIDI by songs/synth.py)."""
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


def compose(rng: np.random.Generator, seconds: float, one_program: bool = False,
            held_out: bool = False) -> tuple[Plan, list[Part]]:
    """Write a song: one plan, then every part from it, sections repeated along the form."""
    plan = make_plan(rng, held_out)
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
