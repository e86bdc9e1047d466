"""pool.token_pool: each pair keeps the song it came from and the classes summed into its context."""
import os

import numpy as np
import soundfile as sf
import torch
import yaml

from audio import activity
from training import pool
from data import PairDraw, StemPairDataset
from audio.instruments import instrument_id

SR = 8000
CLASSES = (("piano", 0), ("bass", 33), ("organ", 16))   # class name, GM program


def frequency(track: int, stem: int) -> int:
    """Every stem of every track plays its own whole-Hz sine, so a crop's spectrum names its stems."""
    return 500 * track + 100 * (stem + 1)


def write_sines(root: str, tracks: int = 3, seconds: float = 2.0) -> None:
    t = np.arange(int(seconds * SR)) / SR
    for k in range(tracks):
        track = os.path.join(root, f"Track{k:05d}")
        os.makedirs(os.path.join(track, "stems"))
        meta = {"stems": {}}
        for j in range(3):
            sf.write(os.path.join(track, "stems", f"S{j:02d}.wav"),
                     (0.1 * np.sin(2 * np.pi * frequency(k, j) * t)).astype(np.float32), SR)
            meta["stems"][f"S{j:02d}"] = {"program_num": CLASSES[(j + k) % 3][1], "is_drum": False}
        with open(os.path.join(track, "metadata.yaml"), "w") as f:
            yaml.safe_dump(meta, f)


def sounding(wave: np.ndarray) -> set[int]:
    """The whole-Hz frequencies that carry a sine in a 1 s wave."""
    mag = np.abs(np.fft.rfft(wave))
    return {int(f) for f in np.flatnonzero(mag > 0.25 * mag.max())}


def test_pool_pairs_carry_their_track_and_their_context_classes(tmp_path):
    root = str(tmp_path / "sines")
    write_sines(root)
    ds = StemPairDataset(root, "all", PairDraw(SR, crop_seconds=1.0), seed=0, verbose=False)
    seen = []

    def encode(waves):                      # keeps what it was given; tokens are not what this test is about
        seen.append(waves.clone())
        return torch.zeros(waves.shape[0], 1, 50, dtype=torch.long)

    got = pool.token_pool(ds, encode, n_pairs=30, per_segment=4, seed=0, batch=8, progress=False)
    contexts = torch.cat([w[:len(w) // 2] for w in seen]).numpy()
    targets = torch.cat([w[len(w) // 2:] for w in seen]).numpy()
    assert len(got["song"]) == len(contexts) == 30 and got["context_classes"].shape == (30, 17)
    assert len(set(got["song"].tolist())) == 3
    for i in range(30):
        track = ds.tracks[int(got["song"][i])]
        k = int(track.name[-5:])
        stems_in_context = {f % 500 // 100 - 1 for f in sounding(contexts[i])}
        (target_freq,) = sounding(targets[i])
        assert {f // 500 for f in sounding(contexts[i]) | {target_freq}} == {k}          # all from its song
        target_stem = target_freq % 500 // 100 - 1
        assert target_stem not in stems_in_context
        assert int(got["instrument"][i]) == instrument_id(CLASSES[(target_stem + k) % 3][0])
        classes = {instrument_id(CLASSES[(j + k) % 3][0]) for j in stems_in_context}
        assert set(np.flatnonzero(got["context_classes"][i].numpy()).tolist()) == classes


def test_a_pool_without_progress_draws_no_bar_and_says_what_it_is_doing(tmp_path, monkeypatch, capsys):
    """`--no-progress` (progress=False) silences the activity-map bar too, and one line says that tokenising
    has started, so a quiet run does not look hung."""
    root = str(tmp_path / "sines")
    write_sines(root)
    monkeypatch.setattr(activity, "PROGRESS_FROM", 1)     # a bar even for these 9 stems, when asked for

    class Codec:
        sample_rate = SR

    monkeypatch.setattr(pool, "tokenize", lambda codec, waves: torch.zeros(waves.shape[0], 1, 50, dtype=torch.long))
    pool.split_pool(Codec(), root, "all", 1.0, n=6, seed=0, progress=False, verbose=True)
    err = capsys.readouterr().err
    assert "activity map" not in err and "tokenising 6 pairs" in err
    StemPairDataset(root, "all", PairDraw(SR, crop_seconds=1.0), seed=0, verbose=True,
                    cache_dir=str(tmp_path / "fresh"))
    assert "activity map" in capsys.readouterr().err   # the bar is there by default


def test_a_pool_keeps_each_contexts_harmony_negative_beside_it_and_its_batches_carry_it(tmp_path):
    """With `negative`, each pair's negative is made from its own context wave (here: the wave's loudest
    frequency, written into the tokens), stored in pair order, and handed out with its pair by pool_batches."""
    root = str(tmp_path / "sines")
    write_sines(root)
    ds = StemPairDataset(root, "all", PairDraw(SR, crop_seconds=1.0), seed=0, verbose=False)
    peak = lambda waves: torch.from_numpy(np.abs(np.fft.rfft(waves.numpy(), axis=1)).argmax(1))
    encode = lambda waves: peak(waves)[:, None, None].expand(-1, 1, 50).clone()
    negative = lambda waves: -peak(waves)[:, None, None].expand(-1, 1, 50).clone()
    got = pool.token_pool(ds, encode, n_pairs=20, per_segment=4, seed=0, batch=8, progress=False, negative=negative)
    assert got["harmony"].shape == got["context"].shape
    assert torch.equal(got["harmony"], -got["context"])                    # each negative is its own context's
    assert "harmony" not in pool.token_pool(ds, encode, n_pairs=4, per_segment=4, seed=0, progress=False)
    (ctx, tgt, inst, neg), = next(pool.pool_batches(got, 4, seed=0, shard=pool.Shard(micro=4)))
    assert torch.equal(neg, -ctx)
