"""activity.py and its use in data.py: per-second stem levels, their cache, and pairs read from the chosen stems only."""
import os

import numpy as np
import pytest
import torch

from audio import activity
import data
from audio import slakh
from conftest import STEM_SR as SR, tone, write_stem, write_track
from data import PairDraw, StemPairDataset
from audio.instruments import instrument_id

def burst_at_end(seconds, second):
    """Silence, with a loud 0.1 s tone at the end of second `second`: a crop that touches that second but
    stops before the burst is silent, though the per-second map cannot tell."""
    x = np.zeros(int(seconds * SR), np.float32)
    a, b = int((second + 0.9) * SR), int((second + 1) * SR)
    x[a:b] = tone(0.1, 500, 0.9)
    return x


def test_map_equals_the_level_of_each_second_read_directly(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(int(3.5 * SR)) * np.linspace(0, 0.5, int(3.5 * SR))).astype(np.float32)
    path = str(tmp_path / "S00.wav")
    write_stem(path, x)
    stem = slakh.Stem("S00", path, 0, SR, len(x))
    ms = activity.stem_activity(path)
    assert ms.shape == (4,) and ms.dtype == np.float32         # 3 whole seconds and the half second left
    for k in range(4):
        crop = data.read_crop(stem, k, 1.0)                    # the last read stops at the file's end
        assert ms[k] == pytest.approx(np.mean(np.square(crop, dtype=np.float64)), rel=1e-6)
    assert ms[3] > ms[0]


def test_a_crop_the_map_rules_out_is_silent_by_rms_db(tmp_path):
    """The bound never rules out a sounding crop, and does rule out crops in long silences."""
    x = np.zeros(10 * SR, np.float32)
    x[int(2.3 * SR):int(2.6 * SR)] = tone(0.3, 300)
    x[int(7.95 * SR):int(8.05 * SR)] = tone(0.1, 700, 0.05)
    path = str(tmp_path / "S00.wav")
    write_stem(path, x)
    stem = slakh.Stem("S00", path, 0, SR, len(x))
    ms, rng, ruled_out = activity.stem_activity(path), np.random.default_rng(1), 0
    for _ in range(400):
        start_s, seconds, silence = rng.uniform(0, 10), rng.uniform(0.05, 4), rng.uniform(-70, -20)
        start, n = data.crop_frames(stem, start_s, seconds)
        sounds = data.rms_db(data.read_crop(stem, start_s, seconds)) >= silence
        may = activity.crop_may_sound(ms, SR, len(x), start, n, silence)
        assert may or not sounds, (start_s, seconds, silence)
        ruled_out += not may
    assert ruled_out > 100
    # a map shorter than the file (a header that promised more frames than decode) rules nothing out past it
    assert activity.crop_may_sound(ms[:5], SR, len(x), 8 * SR, SR, 0.0)
    assert not activity.crop_may_sound(ms[:5], SR, len(x), 0, SR, -30.0)


def test_maps_computed_in_parallel_processes_equal_the_serial_ones(tmp_path, monkeypatch):
    paths = []
    for k in range(4):
        paths.append(str(tmp_path / f"S{k:02d}.wav"))
        write_stem(paths[-1], tone(2.5, 100 * (k + 1), amp=0.1 * (k + 1)))
    bad = str(tmp_path / "bad.wav")
    open(bad, "w").write("not audio")
    monkeypatch.setattr(activity, "PROGRESS_FROM", 1)          # few files: processes all the same
    parallel = activity.compute_maps(paths + [bad], progress=False, workers=2)
    assert parallel[-1] is None
    for p, ms in zip(paths, parallel):
        assert np.array_equal(ms, activity.stem_activity(p))


def test_cache_is_reused_and_entries_of_changed_files_are_rebuilt(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    write_track(root, {"S00": ("Piano", tone(3, 220)), "S01": ("Bass", tone(3, 110))})
    stems = slakh.scan_tracks(root)[0][0].stems
    calls = []
    real = activity.stem_activity
    monkeypatch.setattr(activity, "stem_activity", lambda p: calls.append(os.path.basename(p)) or real(p))
    cache = str(tmp_path / "cache")
    first = activity.activity_maps(root, stems, cache, progress=False)
    assert sorted(calls) == ["S00.wav", "S01.wav"] and len(os.listdir(cache)) == 1
    calls.clear()
    again = activity.activity_maps(root, stems, cache, progress=False)
    assert calls == [] and all(np.array_equal(first[p], again[p]) for p in first)

    write_stem(stems[1].path, tone(3, 110, amp=0.05))                 # new content (and mtime)
    stems = slakh.scan_tracks(root)[0][0].stems
    changed = activity.activity_maps(root, stems, cache, progress=False)
    assert calls == ["S01.wav"]
    assert changed[stems[1].path][0] == pytest.approx(activity.stem_activity(stems[1].path)[0])
    assert changed[stems[1].path][0] < first[stems[1].path][0] / 10

    calls.clear()
    st = os.stat(stems[0].path)
    os.utime(stems[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched, same size
    activity.activity_maps(root, stems, cache, progress=False)
    assert calls == ["S00.wav"]


def test_a_cache_file_of_another_version_is_ignored(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    write_track(root, {"S00": ("Piano", tone(2, 220)), "S01": ("Bass", tone(2, 110))})
    stems = slakh.scan_tracks(root)[0][0].stems
    cache = str(tmp_path / "cache")
    activity.activity_maps(root, stems, cache, progress=False)
    path = activity.cache_candidates(root, cache)[0]
    assert set(activity.load_cache(path)) == {"train/Track00001/stems/S00.wav", "train/Track00001/stems/S01.wav"}
    monkeypatch.setattr(activity, "VERSION", activity.VERSION + 1)
    assert activity.load_cache(path) == {}


def test_default_cache_location_and_unwritable_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(activity.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    root = str(tmp_path / "ds")
    write_track(root, {"S00": ("Piano", tone(2, 220)), "S01": ("Bass", tone(2, 110))})
    ds = StemPairDataset(root, draw=PairDraw(SR, crop_seconds=1.0), seed=0, verbose=False)
    assert os.path.isfile(os.path.join(root, ".stemgen-cache", f"activity-v{activity.VERSION}.npz"))
    assert len(ds.activity) == 2

    # the dataset folder cannot take the cache (a file stands where its folder would be): the user's cache
    root2 = str(tmp_path / "ds2")
    write_track(root2, {"S00": ("Piano", tone(2, 220)), "S01": ("Bass", tone(2, 110))})
    open(os.path.join(root2, ".stemgen-cache"), "w").close()
    StemPairDataset(root2, draw=PairDraw(SR, crop_seconds=1.0), seed=0, verbose=False)
    assert len(os.listdir(tmp_path / "user-cache" / "stemgen")) == 1

    # nowhere to write: computed in memory, said once, and the data still load
    blocked = str(tmp_path / "blocked")
    open(blocked, "w").close()
    for _ in range(2):
        ds = StemPairDataset(root, draw=PairDraw(SR, crop_seconds=1.0), seed=0, verbose=False,
                             cache_dir=os.path.join(blocked, "cache"))
        ctx, tgt, _ = ds[0]
        assert len(ds.activity) == 2 and tgt.abs().max() > 0.1
    assert capsys.readouterr().err.count("cannot write the activity cache") == 1


def band(seconds=4.0):
    """Three tones throughout, a stem with a burst the map cannot place, and a silent stem."""
    return {"S00": ("Piano", tone(seconds, 220)), "S01": ("Bass", tone(seconds, 110)),
            "S02": ("Guitar", tone(seconds, 330)), "S03": ("Brass", burst_at_end(seconds, 2)),
            "S04": ("Synth Pad", np.zeros(int(seconds * SR), np.float32))}


def record_pairs(ds, monkeypatch):
    """Make _mix_pair return (context stems, target stem) and count the stems read."""
    reads = []
    real_read = data.read_crop
    monkeypatch.setattr(data, "read_crop", lambda stem, a, s: reads.append(stem.name) or real_read(stem, a, s))
    monkeypatch.setattr(ds, "_mix_pair", lambda track, crops, ctx, tgt: (tuple(sorted(ctx)), tgt))
    return reads


def test_pairs_are_uniform_over_the_sounding_stems_and_only_their_stems_are_read(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    write_track(root, band())
    ds = StemPairDataset(root, draw=PairDraw(SR, crop_seconds=1.0), seed=0, verbose=False, check=False)
    track = ds.tracks[0]
    start = 1.5                                   # [1.5, 2.5): S03's burst at 2.9 s is outside, its second not
    s03, s04 = track.stems[3], track.stems[4]
    assert ds._may_sound(s03, *data.crop_frames(s03, start, 1.0))
    assert data.rms_db(data.read_crop(s03, start, 1.0)) < ds.silence_db
    assert not ds._may_sound(s04, *data.crop_frames(s04, start, 1.0))
    reads = record_pairs(ds, monkeypatch)
    counts = {}
    for i in range(1800):
        reads.clear()
        ctx, tgt = ds._pair_from_activity(track, start, np.random.default_rng([7, i]))
        counts[(ctx, tgt)] = counts.get((ctx, tgt), 0) + 1
        used = {track.stems[k].name for k in ctx + (tgt,)}
        assert "S04" not in reads and len(reads) == len(set(reads)) and used <= set(reads)   # each read once
        if "S03" not in reads:                    # no pair redrawn: the stems read are the pair's
            assert set(reads) == used
    assert {k for pair in counts for k in pair[0] + (pair[1],)} == {0, 1, 2}
    assert len(counts) == data.pair_count(3)
    assert max(counts.values()) / min(counts.values()) < 1.35


def test_items_read_only_their_stems_and_stay_a_function_of_seed_and_index(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    stems = {f"S{k:02d}": (c, tone(4, 110 * (k + 1))) for k, c in enumerate(["Piano", "Bass", "Guitar", "Brass", "Reed", "Organ"])}
    write_track(root, stems)
    ds = StemPairDataset(root, draw=PairDraw(SR, crop_seconds=1.0), seed=3, length=40, verbose=False)
    reads = []
    real_read = data.read_crop
    monkeypatch.setattr(data, "read_crop", lambda stem, a, s: reads.append(stem.name) or real_read(stem, a, s))
    per_item = []
    for i in range(40):
        reads.clear()
        ctx, tgt, inst = ds[i]
        per_item.append(len(reads))
        # the target's tone is in the target and not in the context; the context holds exactly the stems read
        # besides the target (all stems sound everywhere, so a pair is never drawn twice)
        t = np.arange(SR) / SR
        level = {k: abs(np.dot(ctx.numpy(), np.exp(-2j * np.pi * 110 * (k + 1) * t))) / SR for k in range(6)}
        target_k = [k for k, (c, _) in enumerate(stems.values()) if instrument_id(c) == inst][0]
        in_ctx = {k for k in range(6) if level[k] > 0.05}
        assert target_k not in in_ctx and in_ctx
        assert sorted(reads) == sorted([f"S{k:02d}" for k in in_ctx] + [f"S{target_k:02d}"])
    assert np.mean(per_item) < 5                  # about 1 + 5/2 of the 6 stems
    monkeypatch.undo()
    again = StemPairDataset(root, draw=PairDraw(SR, crop_seconds=1.0), seed=3, length=40, verbose=False)
    loader = torch.utils.data.DataLoader(again, batch_size=4, num_workers=2)
    got = [x for batch in loader for x in zip(*batch)]
    for i, (c, t, k) in enumerate(got):
        c0, t0, k0 = ds[i]
        assert torch.equal(c, c0) and torch.equal(t, t0) and int(k) == k0


def test_segment_pairs_give_the_same_items_with_and_without_the_map_and_skip_silent_stems(tmp_path, monkeypatch):
    """A map that rules nothing out (every stem read) and the real one (the silent stem never read) give the
    same items."""
    root = str(tmp_path / "ds")
    write_track(root, band(seconds=6.0))
    kw = dict(draw=PairDraw(SR, crop_seconds=1.0, segment_seconds=6.0), seed=0, verbose=False)
    old, new = StemPairDataset(root, **kw), StemPairDataset(root, **kw)
    old.activity = {}                                     # no stem's map: every stem may sound, every stem is read
    reads = []
    real_read = data.read_crop
    monkeypatch.setattr(data, "read_crop", lambda stem, a, s: reads.append(stem.name) or real_read(stem, a, s))
    a = old.segment_pairs(0, 12, np.random.default_rng(5))
    assert sorted(reads) == ["S00", "S01", "S02", "S03", "S04"]
    reads.clear()
    b = new.segment_pairs(0, 12, np.random.default_rng(5))
    assert "S04" not in reads and len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
