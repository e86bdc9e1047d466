"""pool.TokenCache and the on-the-fly tokens: cached target tokens equal fresh ones, keys follow files and
codecs, the size bound holds, crops start on the grid, bf16 agreement is measured."""
import copy
import os
import re

import numpy as np
import pytest
import torch

import data
from training import pool
import train
from training.recipes import Recipe
from codec import ENCODEC_32KHZ_CONFIG
from conftest import STEM_SR as SR, tiny_encodec, tone, write_stem, write_track

CODEC_SR = ENCODEC_32KHZ_CONFIG["sampling_rate"]   # tiny_encodec's rate, the pairs' output rate
CROP = 0.25       # seconds: 8000 samples, 12.5 frames of the codec at 32 kHz
CROP_SAMPLES = round(CROP * CODEC_SR)


@pytest.fixture(scope="module")
def codec():
    return tiny_encodec()


def band_root(tmp_path, seconds=4.0):
    root = str(tmp_path / "ds")
    write_track(root, {"S00": ("Piano", tone(seconds, 220)), "S01": ("Bass", tone(seconds, 110)),
                       "S02": ("Guitar", tone(seconds, 330))})
    return root


def keyed_dataset(root, **draw):
    return data.StemPairDataset(root, draw=data.PairDraw(CODEC_SR, crop_seconds=CROP, start_grid=1.0, **draw), seed=0,
                                length=64, verbose=False, target_keys=True)


def test_crops_start_on_the_grid_and_keys_name_the_target_crop(tmp_path):
    ds = keyed_dataset(band_root(tmp_path), segment_seconds=60.0)
    starts = set()
    for i in range(64):
        ctx, tgt, inst, key = ds[i]
        path, _, _, rate, start, frames, out_rate, n = key.split("|")
        assert int(rate) == SR and int(frames) == SR * CROP and int(out_rate) == CODEC_SR and int(n) == len(tgt)
        assert int(start) % SR == 0                       # whole seconds from the segment's start (0 s)
        stem = next(s for s in ds.tracks[0].stems if os.path.abspath(s.path) == path)
        assert stem.instrument == inst
        # the key's crop, read and resampled as the dataset does, is the item's target
        again = data.fit_length(data.resample(data.read_crop(stem, int(start) / SR, CROP), SR, CODEC_SR), len(tgt))
        assert torch.equal(tgt, torch.from_numpy(again.astype(np.float32)))
        starts.add(int(start) // SR)
    assert starts == {0, 1, 2, 3}                          # 4 s song, 1 s grid: every grid point is used


def test_cached_target_tokens_equal_fresh_ones(tmp_path, codec):
    ds = keyed_dataset(band_root(tmp_path))
    items = [ds[i] for i in range(16)]
    waves = torch.stack([t for _, t, _, _ in items])
    keys = [k for *_, k in items]
    cache = pool.TokenCache(10**8)
    first = cache.tokens(codec, waves[:8], keys[:8])
    assert cache.hits + cache.misses == 8
    both = cache.tokens(codec, waves, keys)                   # the first 8 again, and 8 more
    fresh = pool.tokenize(codec, waves)
    assert torch.equal(first, fresh[:8]) and torch.equal(both, fresh)
    assert cache.hits >= 8 and cache.hits + cache.misses == 24
    assert len(cache.entries) == len(set(keys))              # 3 stems x 4 starts at most: repeats found


def test_a_rewritten_stem_or_another_codec_never_hits_old_tokens(tmp_path, codec):
    root = band_root(tmp_path)
    ds = keyed_dataset(root)
    stem = ds.tracks[0].stems[0]
    wave = torch.from_numpy(data.fit_length(data.resample(data.read_crop(stem, 1.0, CROP), SR, CODEC_SR),
                                             CROP_SAMPLES))[None]
    key = data.target_key(stem, 1.0, CROP, CODEC_SR)
    cache = pool.TokenCache(10**8)
    cache.tokens(codec, wave, [key])
    cache.tokens(copy.deepcopy(codec), wave, [key])           # the same weights: a hit
    assert (cache.hits, cache.misses) == (1, 1)

    write_stem(stem.path, tone(4.0, 220, amp=0.1))             # rewritten: a new size or mtime, a new key
    assert data.target_key(stem, 1.0, CROP, CODEC_SR) != key

    other = copy.deepcopy(codec)
    with torch.no_grad():
        other.model.quantizer.layers[0].codebook.embed.mul_(-1)
    got = cache.tokens(other, wave, [key])
    assert cache.misses == 2 and torch.equal(got, pool.tokenize(other, wave))
    assert pool.codec_fingerprint(other) != pool.codec_fingerprint(codec)
    bf16 = pool.TokenCache(10**8, encode_dtype="bf16")
    bf16.entries = cache.entries                               # fp32 entries are not bf16 ones
    bf16.tokens(codec, wave, [key])
    assert bf16.misses == 1


def test_the_size_bound_holds_and_the_least_recently_used_go_first(codec):
    waves = 0.1 * torch.randn(5, 3200, generator=torch.Generator().manual_seed(0))
    one = pool.tokenize(codec, waves[:1]).to(torch.int16)
    size = one.numel() * one.element_size()
    cache = pool.TokenCache(3 * size)
    cache.tokens(codec, waves[:3], ["a", "b", "c"])
    cache.tokens(codec, waves[:1], ["a"])                      # a is now the most recently used
    cache.tokens(codec, waves[3:5], ["d", "e"])
    assert cache.bytes <= 3 * size and len(cache.entries) == 3
    assert {k for *_, k in cache.entries} == {"a", "d", "e"}
    with pytest.raises(ValueError):
        pool.TokenCache(0)


def test_loader_batches_give_the_same_tokens_with_the_cache(tmp_path, codec):
    root = band_root(tmp_path)
    recipe = Recipe(crop_seconds=CROP, batch=4, seed=2, workers=0, crop_grid=1.0)
    kw = dict(codec=codec, recipe=recipe, root=root, shard=pool.Shard(micro=4), device=torch.device("cpu"),
              verbose=False)
    cache = pool.TokenCache(10**8)
    plain, cached = pool.loader_batches(**kw), pool.loader_batches(**kw, token_cache=cache)
    for _ in range(4):
        (c0, t0, k0, n0), = next(plain)
        (c1, t1, k1, n1), = next(cached)
        assert n0 is None and n1 is None                          # no harmony negative on the fly
        assert torch.equal(c0, c1) and torch.equal(t0, t1) and torch.equal(k0, k1)
    assert cache.hits > 0 and cache.misses <= 12                # 16 targets, of 3 stems x 4 starts


def test_bf16_agreement_is_measured_per_level(codec):
    waves = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))
    agree = pool.token_agreement(codec, waves)
    assert len(agree) == codec.n_q and all(0.0 <= a <= 1.0 for a in agree)
    assert agree[0] > 0.5
    with pytest.raises(ValueError, match="encode_dtype"):
        pool.tokenize(codec, waves, "fp16")


def test_the_token_cache_needs_a_crop_grid():
    args = train.parse_args(["--data", "x", "--token-cache-gb", "1"])
    with pytest.raises(train.TrainError, match=re.escape("--crop-grid")):
        train.resolve_recipe(args)
    train.resolve_recipe(train.parse_args(["--data", "x", "--token-cache-gb", "1", "--crop-grid", "0.5"]))
