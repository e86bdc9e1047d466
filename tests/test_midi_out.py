"""midi.py: a stem's notes as a MIDI file for a DAW (program, tempo, notes, velocities)."""
import numpy as np
import pretty_midi
import pytest

from notes import transcriber
from notes import midi
from conftest import chord
from audio.instruments import instrument_id

SR = 22050


def click_track(bpm, seconds, sr=SR):
    x = np.zeros(int(seconds * sr), np.float32)
    burst = (np.hanning(200) * np.sin(np.arange(200) * 0.3)).astype(np.float32)
    for k in range(int(seconds * bpm / 60)):
        i = int(k * 60 / bpm * sr)
        x[i:i + 200] += burst[:len(x) - i]
    return x


@pytest.mark.parametrize("name,program,is_drum", [("piano", 0, False), ("bass", 32, False), ("drums", 0, True),
                                                  ("synth effects", 96, False), ("sound effects", 119, False)])
def test_a_class_gets_its_first_gm_program(name, program, is_drum):
    assert midi.class_program(instrument_id(name)) == (program, is_drum)


def test_tempo_is_detected_from_a_steady_beat_and_none_without_one():
    assert midi.detect_tempo(click_track(100, 8), SR) == pytest.approx(100, abs=3)
    stereo = np.stack([click_track(100, 8)] * 2)
    assert midi.detect_tempo(stereo, SR) == pytest.approx(100, abs=3)
    assert midi.detect_tempo(np.zeros(3 * SR), SR) is None          # silence
    assert midi.detect_tempo(click_track(100, 1), SR) is None       # too short to tell
    rng = np.random.default_rng(0)
    assert midi.detect_tempo(0.1 * rng.standard_normal(8 * SR), SR) is None        # noise: no pulse
    hits = np.zeros(8 * SR, np.float32)
    for t in np.sort(rng.uniform(0, 7.9, 14)):                          # hits at random times
        hits[int(t * SR):int(t * SR) + 200] += np.hanning(200) * np.sin(np.arange(200) * 0.3)
    assert midi.detect_tempo(hits, SR) is None


def test_a_bass_line_comes_back_as_its_notes_with_program_tempo_and_velocities(tmp_path):
    rng = np.random.default_rng(0)
    line = [40, 43, 45, 47]
    y = np.concatenate([chord([p], 0.5, 44100, rng) * 4 for p in line])
    pm = midi.instrument_midi(y, 44100, instrument_id("bass"), tempo=96.0)
    path = str(tmp_path / "bass.mid")
    midi.write_midi(path, pm)
    back = pretty_midi.PrettyMIDI(path)                                  # what a DAW reads
    assert back.get_tempo_changes()[1][0] == pytest.approx(96.0, abs=0.01)
    (track,) = back.instruments
    assert (track.program, track.is_drum, track.name) == (32, False, "Bass")
    found = sorted({n.pitch for n in track.notes})
    assert set(line) <= set(found)
    for k, p in enumerate(line):                                         # each note where it was played
        starts = [n.start for n in track.notes if n.pitch == p]
        assert min(abs(s - 0.5 * k) for s in starts) < 0.06
    assert all(1 <= n.velocity <= 127 and n.end > n.start for n in track.notes)
    with pytest.raises(FileExistsError):
        midi.write_midi(path, pm)


def test_silence_gives_a_file_with_no_notes_and_the_default_tempo():
    pm = midi.stem_to_midi(np.zeros(SR, np.float32), SR, program=0)
    assert pm.instruments[0].notes == [] and pm.get_tempo_changes()[1][0] == midi.DEFAULT_TEMPO
    with pytest.raises(ValueError, match="outside 0-127"):
        midi.stem_to_midi(np.zeros(SR, np.float32), SR, program=128)


def test_note_events_are_the_notes_with_their_amplitudes():
    rng = np.random.default_rng(1)
    y = chord([57, 64], 1.0, transcriber.SAMPLE_RATE, rng) * 4
    events = transcriber.transcribe_events(y)
    assert events.shape[1] == 4 and len(events) > 0
    np.testing.assert_array_equal(events[:, :3], transcriber.transcribe(y))
    assert np.all((events[:, 3] > 0) & (events[:, 3] <= 1))
