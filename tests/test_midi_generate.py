"""generate.py --midi: each stem's notes as a MIDI file beside it (midi.py), at the context's tempo, with
the class's GM program."""
import pretty_midi
import pytest
import soundfile as sf

import generate
from cli.common import USER_ERROR
from conftest import bass_line

SR = 22050


def test_midi_beside_each_stem_with_its_program_and_the_contexts_tempo(tiny_app_checkpoint, tmp_path, capsys):
    ctx = tmp_path / "song.wav"
    sf.write(str(ctx), bass_line(4.0, SR, seed=5), SR)          # 120 BPM
    argv = ["--context", str(ctx), "--instrument", "bass", "--instrument", "piano", "--checkpoint",
            tiny_app_checkpoint, "--midi", "--seed", "0", "--steps", "8", "4", "--device", "cpu"]
    assert generate.main(argv) == 0, capsys.readouterr().err
    assert "MIDI at the context's tempo" in capsys.readouterr().err
    for name, program in [("song.bass.mid", 32), ("song.piano.mid", 0)]:
        pm = pretty_midi.PrettyMIDI(str(tmp_path / name))
        (track,) = pm.instruments
        assert track.program == program and not track.is_drum and len(track.notes) > 0
        assert pm.get_tempo_changes()[1][0] == pytest.approx(120, abs=5)
    assert generate.main(argv) == USER_ERROR                # outputs exist: nothing overwritten
    assert "output exists" in capsys.readouterr().err


def test_the_notes_are_played_through_the_soundfont_sample_aligned_beside_the_midi(tiny_app_checkpoint, tmp_path,
                                                                                 capsys):
    """--midi also writes each stem's notes played with the class's program (STEM.notes.wav) and the context with
    them, at the context's rate and length, and says which file is the model's and which the transcription."""
    ctx = tmp_path / "song.wav"
    sf.write(str(ctx), bass_line(4.0, SR, seed=5), SR)
    argv = ["--context", str(ctx), "--instrument", "bass", "--checkpoint", tiny_app_checkpoint, "--midi",
            "--seed", "0", "--steps", "8", "4", "--device", "cpu"]
    assert generate.main(argv) == 0
    err = capsys.readouterr().err
    for name in ("song.bass.notes.wav", "song.with-bass.notes.wav"):
        info = sf.info(str(tmp_path / name))
        assert (info.samplerate, info.frames) == (SR, sf.info(str(ctx)).frames)
    assert "transcribed notes" in err and "what StemGen generated" in err


def test_render_notes_starts_each_note_on_its_sample():
    from notes import midi
    pm = pretty_midi.PrettyMIDI()
    track = pretty_midi.Instrument(program=32)
    track.notes.append(pretty_midi.Note(velocity=100, pitch=40, start=1.0, end=1.5))
    pm.instruments.append(track)
    y = midi.render_notes(pm, SR, 2 * SR)
    assert y.shape == (2 * SR,) and abs(y[:SR]).max() == 0.0                     # silent before the note
    onset = int((abs(y) > 1e-4).argmax())
    assert SR <= onset < SR + SR // 100                                          # sounds within 10 ms of 1.0 s
