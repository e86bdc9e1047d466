"""songs/demo.py: the demo's data made on first use (and refused when made otherwise), the context to try."""
import os

import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import chord
from songs import demo, synth


@pytest.mark.slow
def test_demo_dataset_refuses_a_folder_made_with_other_settings(tmp_path):
    """train.py's demo never trains silently on songs that are not the demo's."""
    other = str(tmp_path / "other")
    synth.make_dataset(other, tracks=1, seconds=1.0, seed=0, workers=1, progress=False)
    with pytest.raises(synth.SynthError, match="other settings"):
        demo.demo_dataset(other, seed=0, progress=False)


def write_stems(track_dir, stems, sr):
    """A track in the Slakh layout from {name: (GM program, wave)}."""
    os.makedirs(os.path.join(track_dir, "stems"))
    for name, (_, wave) in stems.items():
        sf.write(os.path.join(track_dir, "stems", name + ".wav"), wave, sr)
    meta = {"stems": {name: {"program_num": program, "is_drum": False} for name, (program, _) in stems.items()}}
    with open(os.path.join(track_dir, "metadata.yaml"), "w") as f:
        yaml.safe_dump(meta, f)


def test_demo_context_is_a_held_out_mix_whose_missing_piano_shares_its_key(tmp_path):
    """Two test songs with a piano: in one the other stem (guitar) plays the piano's C major, in the other the
    organ plays F# major. The context written is the guitar's, and the missing class is piano."""
    sr, rng = 16000, np.random.default_rng(0)
    c_major, f_sharp_major = [60, 64, 67], [66, 70, 73]
    root = tmp_path / "ds"
    write_stems(str(root / "test" / "Track00000"), {"S00": (0, chord(c_major, 4.0, sr, rng)),
                                                    "S01": (24, chord([p - 12 for p in c_major], 4.0, sr, rng))}, sr)
    write_stems(str(root / "test" / "Track00001"), {"S00": (0, chord(c_major, 4.0, sr, rng)),
                                                    "S01": (16, chord(f_sharp_major, 4.0, sr, rng))}, sr)
    # with seed 1 the first test pair whose missing stem is a piano has the organ's context: the key rule must skip it
    path, missing = demo.demo_context(str(root), str(tmp_path / "context.wav"), sr, seed=1)
    assert missing == "Piano" and path == str(tmp_path / "context.wav")
    written, written_sr = sf.read(path, dtype="float32")
    assert written_sr == sr and len(written) == 10 * sr                      # a 10 s crop, the song zero-padded
    guitar, _ = sf.read(str(root / "test" / "Track00000" / "stems" / "S01.wav"), dtype="float32")
    organ, _ = sf.read(str(root / "test" / "Track00001" / "stems" / "S01.wav"), dtype="float32")
    assert not written[4 * sr:].any()                                        # the crop starts at 0: nothing else fits
    assert np.corrcoef(written[:4 * sr], guitar)[0, 1] > 0.99 and abs(np.corrcoef(written[:4 * sr], organ)[0, 1]) < 0.5
