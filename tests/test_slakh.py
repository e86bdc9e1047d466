"""audio/slakh.py: the Slakh layout read from disk (both fixture layouts, the hash split)."""
import os

import pytest

from conftest import FIXTURE
from audio import slakh
from audio.instruments import INSTRUMENTS

REDUX = os.path.join(FIXTURE, "slakh2100_flac_redux")
BABY = os.path.join(FIXTURE, "babyslakh_16k")


@pytest.mark.parametrize("root", [REDUX, BABY])
def test_fixture_layouts_read_and_unrendered_stems_skipped(root):
    tracks, skips = slakh.scan_tracks(root, "all")
    assert [t.name for t in tracks] == ["Track00001"]
    names = [s.name for s in tracks[0].stems]
    assert "S06" not in names and len(names) == 10  # S06 has metadata but no audio
    assert skips["stem without audio"] == 1
    inst = {s.name: INSTRUMENTS[s.instrument] for s in tracks[0].stems}
    assert inst["S01"] == "Drums" and inst["S04"] == "Strings (continued)" and inst["S00"] == "Guitar"
    if root == BABY:  # audio_rendered: false everywhere, yet the files exist; Track00007 has no metadata
        assert skips["track without metadata.yaml"] == 1


def test_flat_layout_split_is_deterministic_by_track(tmp_path):
    root = str(tmp_path / "flat")
    names = [f"Track{i:05d}" for i in range(1, 41)]
    for n in names:
        os.makedirs(os.path.join(root, n))
    got = {s: [os.path.basename(d) for d, _ in slakh._track_dirs(root) if _ == s] for s in slakh.SPLITS}
    assert sorted(sum(got.values(), [])) == names  # every track in exactly one split
    assert all(got[s] for s in slakh.SPLITS) and len(got["train"]) > len(got["test"])
    assert all(slakh.hash_split(n) == s for s in slakh.SPLITS for n in got[s])
