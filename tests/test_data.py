import os
import shutil
from itertools import combinations

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from conftest import FIXTURE
import data
from audio import slakh
from data import DatasetError, PairDraw, StemPairDataset

REDUX = os.path.join(FIXTURE, "slakh2100_flac_redux")
BABY = os.path.join(FIXTURE, "babyslakh_16k")


def make_track(root, name, stems, sr=16000, seconds=3.0, split=None):
    """Write a Slakh-layout track; stems: {SNN: (inst_class, kind)} with kind "tone<Hz>", "silent" or "missing"."""
    d = os.path.join(root, split, name) if split else os.path.join(root, name)
    os.makedirs(os.path.join(d, "stems"))
    t = np.arange(int(sr * seconds)) / sr
    meta = {"stems": {}}
    for s, (cls, kind) in stems.items():
        meta["stems"][s] = {"inst_class": cls, "is_drum": cls == "Drums", "audio_rendered": True}
        if kind == "missing":
            continue
        x = np.zeros_like(t) if kind == "silent" else 0.3 * np.sin(2 * np.pi * float(kind[4:]) * t)
        sf.write(os.path.join(d, "stems", s + ".wav"), np.stack([x, x], 1), sr)  # stereo on disk
    with open(os.path.join(d, "metadata.yaml"), "w") as f:
        yaml.safe_dump(meta, f)
    return d


BAND = {"S00": ("Piano", "tone220"), "S01": ("Bass", "tone110"), "S02": ("Guitar", "tone330"),
        "S03": ("Synth Pad", "silent"), "S04": ("Brass", "missing")}
FREQ = {0: 220.0, 4: 110.0, 3: 330.0}  # instrument id (Piano, Bass, Guitar) -> tone in BAND


@pytest.mark.parametrize("m", range(0, 8))
def test_pair_count_matches_enumeration(m):
    pairs = list(data.enumerate_pairs(m))
    assert len(pairs) == len(set(pairs)) == data.pair_count(m)
    assert all(ctx and t not in ctx for ctx, t in pairs)
    # independent count: every non-empty proper subset as context, every stem outside it as target
    brute = sum(m - k for k in range(1, m) for _ in combinations(range(m), k))
    assert data.pair_count(m) == brute == (m * (2 ** m - 2)) // 2


def test_choose_pair_is_uniform_over_pairs():
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(6000):
        ctx, t = data.choose_pair(3, rng)
        counts[(tuple(ctx), t)] = counts.get((tuple(ctx), t), 0) + 1
    assert len(counts) == data.pair_count(3) == 9
    assert max(counts.values()) / min(counts.values()) < 1.3


@pytest.mark.parametrize("root", [REDUX, BABY])
def test_fixture_has_no_usable_pair_and_says_so(root):
    with pytest.raises(DatasetError, match="no usable .context, target. pair"):
        StemPairDataset(root, split="all", draw=PairDraw(crop_seconds=1.0, max_tries=6), verbose=False)


def test_items_have_requested_length_rate_and_target_not_in_context(tmp_path):
    root = str(tmp_path / "ds")
    make_track(root, "Track00001", BAND, sr=16000, seconds=3.0, split="train")
    ds = StemPairDataset(root, "train", PairDraw(8000, crop_seconds=1.5), seed=3, length=24, verbose=False)
    assert "1 stem without audio" in ds.summary
    for i in range(len(ds)):
        ctx, tgt, inst = ds[i]
        assert ctx.shape == tgt.shape == (12000,) and ctx.dtype == tgt.dtype == torch.float32
        assert inst in FREQ  # the silent Synth Pad and the missing Brass are never targets
        # the target's tone is absent from the context: project the context onto it
        t = np.arange(12000) / 8000
        spec = {f: abs(np.dot(ctx.numpy(), np.exp(-2j * np.pi * f * t))) / 12000 for f in FREQ.values()}
        assert spec[FREQ[inst]] < 1e-3
        assert any(v > 0.05 for f, v in spec.items() if f != FREQ[inst])  # and the context is not empty
        tone = abs(np.dot(tgt.numpy(), np.exp(-2j * np.pi * FREQ[inst] * t))) / 12000
        assert tone > 0.1  # resampled 16 kHz -> 8 kHz, amplitude kept (0.3 sine -> 0.15)


def test_seeded_items_repeat_and_unseeded_differ(tmp_path):
    root = str(tmp_path / "ds")
    make_track(root, "Track00001", BAND, seconds=4.0, split="train")
    kw = dict(draw=PairDraw(8000, crop_seconds=1.0), length=10, verbose=False)
    a, b = StemPairDataset(root, seed=5, **kw), StemPairDataset(root, seed=5, **kw)
    for i in range(10):
        assert all(torch.equal(x, y) for x, y in zip(a[i][:2], b[i][:2])) and a[i][2] == b[i][2]
    c = StemPairDataset(root, seed=6, **kw)
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(10))
    u = StemPairDataset(root, **kw)                 # unseeded: each read of an item is a fresh draw
    draws = [u[0] for _ in range(8)]
    assert any(not torch.equal(d[0], draws[0][0]) or d[2] != draws[0][2] for d in draws[1:])


def test_renderings_of_one_work_are_one_song(tmp_path):
    """Song-level statistics group by work: every key of a corpus piece shares a song, a plain track is its own."""
    from conftest import write_corpus
    root = str(tmp_path / "ds")
    write_corpus(root, pieces=2, transpositions=(0, 5, 7), seconds=2.0, sr=8000)
    make_track(root, "Track00900", BAND, seconds=2.0)
    make_track(root, "Track00901", BAND, seconds=2.0)
    ds = StemPairDataset(root, "all", PairDraw(8000, crop_seconds=1.0), verbose=False)
    by_track = {}
    for (t, _, _), song in zip(ds.segments, ds.segment_song):
        by_track.setdefault(t.name, set()).add(song)
    assert all(len(s) == 1 for s in by_track.values())
    song = {name: s.pop() for name, s in by_track.items()}
    assert len(set(song.values())) == 4                      # two pieces, two plain songs
    for p in range(2):
        assert len({song[f"Track{p * 12 + t:05d}"] for t in (0, 5, 7)}) == 1
    assert song["Track00000"] != song["Track00012"] and song["Track00900"] != song["Track00901"]


def test_short_song_is_zero_padded(tmp_path):
    root = str(tmp_path / "ds")
    make_track(root, "Track00001", BAND, sr=8000, seconds=1.0, split="train")
    ctx, tgt, _ = StemPairDataset(root, draw=PairDraw(8000, crop_seconds=2.0), seed=0, verbose=False)[0]
    assert ctx.shape == (16000,) and torch.all(tgt[8100:] == 0) and tgt[:8000].abs().max() > 0.1


def test_silence_threshold_rejects_quiet_stems(tmp_path):
    root = str(tmp_path / "ds")
    make_track(root, "Track00001", {"S00": ("Piano", "tone220"), "S01": ("Bass", "tone110")}, split="train")
    StemPairDataset(root, draw=PairDraw(8000, crop_seconds=1.0, silence_db=-20), verbose=False)  # 0.3 sine: -13.5 dB
    with pytest.raises(DatasetError, match="silence_db=-10"):
        StemPairDataset(root, draw=PairDraw(8000, crop_seconds=1.0, silence_db=-10, max_tries=4), verbose=False)


def test_split_leakage_is_an_error(tmp_path):
    root = str(tmp_path / "ds")
    make_track(root, "Track00001", BAND, split="train")
    make_track(root, "Track00002", BAND, split="validation")
    StemPairDataset(root, "validation", PairDraw(8000, crop_seconds=1.0), verbose=False)
    shutil.copytree(os.path.join(root, "train", "Track00001"), os.path.join(root, "test", "Track00001"))
    with pytest.raises(DatasetError, match="split leakage: track Track00001 is in both train/ and test/"):
        StemPairDataset(root, "train", PairDraw(8000, crop_seconds=1.0), verbose=False)


@pytest.mark.parametrize("bad", [dict(crop_seconds=0), dict(segment_seconds=-1.0), dict(sample_rate=0),
                                 dict(max_tries=0), dict(start_grid=0.0)])
def test_a_pair_draw_refuses_values_that_cannot_draw(bad):
    with pytest.raises(DatasetError, match="must be"):
        PairDraw(**bad)


def test_metadata_problems_are_counted_not_crashes(tmp_path):
    root = str(tmp_path / "ds")
    make_track(root, "Track00001", BAND, split="train")
    bad = make_track(root, "Track00002", BAND, split="train")
    with open(os.path.join(bad, "metadata.yaml"), "w") as f:
        f.write("stems: [unclosed\n")
    odd = make_track(root, "Track00003", {"S00": ("Kazoo", "tone220"), "S01": ("Bass", "tone110"),
                                          "S02": ("Piano", "tone330")}, split="train")
    ds = StemPairDataset(root, draw=PairDraw(8000, crop_seconds=1.0), verbose=False)
    assert [t.name for t in ds.tracks] == ["Track00001", "Track00003"]
    assert "1 track with malformed metadata.yaml" in ds.summary and "1 stem without a known class (program_num, inst_class)" in ds.summary
    with pytest.raises(DatasetError, match="dataset folder not found"):
        StemPairDataset(str(tmp_path / "nope"), verbose=False)
    with pytest.raises(DatasetError, match="no usable tracks in split 'test'"):
        StemPairDataset(root, "test", verbose=False)
    assert os.path.isdir(odd)


def test_segments_cover_song_in_minutes():
    t = slakh.Track("T", "", "train", [slakh.Stem("S00", "", 0, 1000, 150_000)])  # 150 s
    assert data.segments(t, 60.0, 20.0) == [(0.0, 60.0), (60.0, 120.0), (120.0, 150.0)]
    t.stems[0].frames = 130_000  # 130 s: the 10 s tail is shorter than a crop and joins the last segment
    assert data.segments(t, 60.0, 20.0) == [(0.0, 60.0), (60.0, 130.0)]


def test_a_stem_that_breaks_during_training_is_skipped_and_counted(tmp_path, capsys):
    root = str(tmp_path / "ds")
    d = make_track(root, "Track00001", BAND, sr=16000, seconds=3.0, split="train")
    ds = StemPairDataset(root, "train", PairDraw(8000, crop_seconds=1.0), seed=0, length=8, verbose=False)
    broken = os.path.join(d, "stems", "S02.wav")
    sf.write(broken, np.full((48000, 2), np.nan, dtype=np.float32), 16000, subtype="FLOAT")   # NaN samples
    items = [ds[i] for i in range(8)]
    assert all(inst in (0, 4) for _, _, inst in items)        # the Guitar stem is never used again
    assert ds.skips["unreadable or non-finite stem"] == 1
    assert "S02.wav" in capsys.readouterr().err
