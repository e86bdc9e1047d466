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
