"""A generated stem as MIDI for a DAW: its notes, transcribed with the project's note transcriber
(notes/transcriber.py: basic-pitch's model run with onnxruntime), with the stem's General MIDI program, in a file whose
tempo is the context's when librosa's tempo estimate finds a steady pulse.

Note times are kept in seconds, so the notes line up with the audio whatever the tempo; the tempo only sets the
file's bar grid, so that a DAW shows the notes on the song's beats. A class stands for a family of eight GM
programs; its MIDI file gets the family's first (Bass: 32, Acoustic Bass). Drums go on the drum channel with the
pitches the transcriber heard, which are not General MIDI's drum keys: a DAW shows where the hits are, not which
drum plays them.
"""
from __future__ import annotations

import numpy as np
import librosa
import pretty_midi

from notes import transcriber
from audio import files as audio_files
from audio.instruments import DRUMS, INSTRUMENTS, program_class
from notes.soundfont import SOUNDFONT, render_part

DEFAULT_TEMPO = 120.0  # a MIDI file's tempo when the context has no beat to follow (MIDI's own default)
TEMPO_RANGE = (40.0, 240.0)
PULSE = 0.25  # onset-envelope autocorrelation at the beat period below this: no steady pulse (noise: ~0.01,
#               hits at random times: ~0.08, a click track: ~0.86, a bass line of even notes: ~0.67)
HOP = 512     # onset envelope hop in samples


def class_program(instrument: int) -> tuple[int, bool]:
    """(GM program, is_drum) that stands for an instrument class (an INSTRUMENTS id): its first program."""
    if instrument == DRUMS:
        return 0, True
    return min(p for p in range(128) if program_class(p) == instrument), False


def detect_tempo(x: np.ndarray, sample_rate: int) -> float | None:
    """The tempo of [S] or [C, S] audio in beats per minute, or None when there is no steady pulse to follow.

    The tempo is librosa's estimate from the onset envelope (the one its beat tracker starts from, without the
    tracker's own pass, whose compilation costs seconds on first use). None when the audio is shorter than
    2 s, silent, its onset envelope repeats at that period with an autocorrelation below PULSE (irregular
    hits, noise), or the tempo is outside 40-240 BPM.
    """
    y = np.asarray(audio_files.to_mono(x), dtype=np.float32)
    if y.size < 2 * sample_rate or not np.any(y):
        return None
    envelope = librosa.onset.onset_strength(y=y, sr=sample_rate, hop_length=HOP)
    tempo = float(librosa.feature.tempo(onset_envelope=envelope, sr=sample_rate, hop_length=HOP)[0])
    if not TEMPO_RANGE[0] <= tempo <= TEMPO_RANGE[1]:
        return None
    e = envelope - envelope.mean()
    lag = int(round(60.0 / tempo * sample_rate / HOP))
    energy = float(np.dot(e, e))
    if lag >= e.size or energy <= 0 or float(np.dot(e[:-lag], e[lag:])) / energy < PULSE:
        return None
    return tempo


def stem_to_midi(wave: np.ndarray, sample_rate: int, program: int, tempo: float | None = None,
                 is_drum: bool = False, name: str = "") -> pretty_midi.PrettyMIDI:
    """The notes of a stem ([S] or [C, S] audio at sample_rate) as a one-track MIDI file.

    Args:
        program: GM program 0-127 of the track (class_program gives a class's).
        tempo: the file's tempo in BPM (detect_tempo of the context); None: DEFAULT_TEMPO.
    Velocities are basic-pitch's (127 x the note's mean posterior). Raises transcriber.TranscriberUnavailable
    when basic-pitch or onnxruntime is not installed.
    """
    if not 0 <= int(program) <= 127:
        raise ValueError(f"GM program {program} is outside 0-127")
    y = audio_files.resample(np.asarray(audio_files.to_mono(np.asarray(wave, dtype=np.float32))), sample_rate,
                       transcriber.SAMPLE_RATE)
    notes = transcriber.transcribe_events(y)                                  # [N, 4]: onset, offset, pitch, amp
    pm = pretty_midi.PrettyMIDI(initial_tempo=float(tempo) if tempo else DEFAULT_TEMPO)
    track = pretty_midi.Instrument(program=int(program), is_drum=is_drum,
                                   name=name or ("Drums" if is_drum else pretty_midi.program_to_instrument_name(program)))
    for start, end, pitch, amplitude in notes:
        velocity = int(np.clip(round(127 * amplitude), 1, 127))
        track.notes.append(pretty_midi.Note(velocity=velocity, pitch=int(pitch), start=float(start),
                                            end=float(max(end, start + 0.01))))
    pm.instruments.append(track)
    return pm


def instrument_midi(stem: np.ndarray, sample_rate: int, instrument: int,
                    tempo: float | None = None) -> pretty_midi.PrettyMIDI:
    """stem_to_midi for a stem of an instrument class (an INSTRUMENTS id), with the class's program and name."""
    program, is_drum = class_program(instrument)
    return stem_to_midi(stem, sample_rate, program, tempo, is_drum, name=INSTRUMENTS[instrument])


def write_midi(path: str, pm: pretty_midi.PrettyMIDI, overwrite: bool = False) -> None:
    """Write a MIDI file atomically (temporary file beside it, then rename); refuse to overwrite unless asked."""
    audio_files.atomic_write(path, pm.write, ".mid", overwrite=overwrite)


def render_notes(pm: pretty_midi.PrettyMIDI, sample_rate: int, n_samples: int, soundfont: str = SOUNDFONT) -> np.ndarray:
    """A MIDI file's notes played with each track's GM program through the SoundFont: mono [n_samples] at
    sample_rate, sample-aligned with the audio the notes were transcribed from (note times are in seconds)."""
    out = np.zeros(n_samples, np.float32)
    for track in pm.instruments:
        notes = [(n.start, n.end, n.pitch, n.velocity) for n in track.notes]
        out += render_part(notes, track.program, track.is_drum, n_samples, sample_rate, soundfont)
    return out
