"""roundtrip.py: the round-trip metrics, and measure's rows over the held-out files of a dataset."""
import numpy as np
import pytest

from metrics import roundtrip
from conftest import chord, tiny_encodec, tone, write_track

SR = 16000


def test_round_trip_metrics_are_perfect_for_identical_audio():
    x = chord([60, 64, 67], 0.5, SR, np.random.default_rng(3))
    assert roundtrip.spectral_convergence(x, x) == 0.0
    assert roundtrip.chroma_similarity(x, x, SR) == pytest.approx((1.0, 1.0), abs=1e-5)
    other = chord([61, 66, 70], 0.5, SR, np.random.default_rng(3))
    assert roundtrip.chroma_similarity(x, other, SR)[1] < 0.5


def test_round_trip_metrics_see_a_degraded_copy():
    """Spectral convergence grows and chroma agreement falls as noise is added."""
    x = chord([60, 64, 67], 0.5, SR, np.random.default_rng(3))
    noise = np.random.default_rng(4).standard_normal(len(x)).astype(np.float32) * np.abs(x).max()
    sc = [roundtrip.spectral_convergence(x, x + a * noise) for a in (0.01, 0.1, 1.0)]
    corr = [roundtrip.chroma_similarity(x, x + a * noise, SR)[1] for a in (0.01, 0.1, 1.0)]
    assert 0 < sc[0] < sc[1] < sc[2] and corr[0] > corr[1] > corr[2]


def test_measure_gives_one_row_per_sounding_held_out_file(tmp_path):
    """Only the test split is measured, silent stems are skipped, `seconds` bounds the audio read; the means
    and the table are of those rows."""
    root = str(tmp_path / "ds")
    write_track(root, {"S00": ("Piano", tone(1.0, 220)), "S01": ("Bass", tone(1.0, 110))}, split="train")
    write_track(root, {"S00": ("Piano", tone(1.0, 330)), "S01": ("Bass", 0 * tone(1.0, 110))}, split="test")
    codec = tiny_encodec()
    rows = roundtrip.measure(codec, root, seconds=0.5, progress=False)
    assert [r["file"] for r in rows] == ["test/Track00001/stems/S00.wav"]
    assert rows[0]["seconds"] == 0.5 and rows[0]["round_trip_s"] > 0
    assert set(rows[0]) == {"file", "seconds", "round_trip_s", *roundtrip.METRICS}
    assert roundtrip.means(rows) == {k: rows[0][k] for k in roundtrip.METRICS}
    assert "mean of 1 files" in roundtrip.table(rows)
    silent = str(tmp_path / "silent")
    write_track(silent, {"S00": ("Piano", 0 * tone(1.0, 220))}, split="test")
    with pytest.raises(ValueError, match="no non-silent audio"):
        roundtrip.measure(codec, silent, progress=False)
