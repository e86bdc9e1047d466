"""Where training tokens come from: pairs tokenised on the fly, or a pool of pairs tokenised once.

The paper's recipe draws fresh (context-mix, target) pairs on the fly and tokenises them on the training
device (`loader_batches`). On a small machine, reading and mixing about ten stems per item costs more than the
model step; the demo therefore draws a pool of pairs once (`token_pool`: each song segment read once for
several crops, drawn as data.py draws pairs), tokenises it, and trains from it (`pool_batches`), with fresh
masks and condition dropout at every use. Validation pairs are drawn the same way, each kept with the song it
comes from, for song-level statistics (listening.py). Either way step s uses items that are a function of
(seed, s), so a resumed run, and N processes, draw what one uninterrupted process would.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from data import DatasetError, StemPairDataset


def token_pool(ds: StemPairDataset, encode, n_pairs: int, per_segment: int, seed: int, batch: int = 32,
               progress: bool = True, desc: str = "tokenising pairs") -> dict:
    """Draw n_pairs items segment by segment (in a seeded order, per_segment each) and tokenise them.

    Args:
        ds: the dataset whose pairs are drawn (its `segment_pairs`).
        encode: waves FloatTensor [B, S] -> tokens LongTensor [B, Q, T] (the codec).
    Returns:
        dict of context, target (int16 [N, Q, T], on the CPU), instrument (long [N]) and song (long [N],
        the index of the pair's track in ds.tracks, for song-level statistics).
    """
    if n_pairs < 1 or per_segment < 1:
        raise DatasetError("a token pool needs n_pairs >= 1 and per_segment >= 1")
    rng = np.random.default_rng([seed, 2**31])
    order, cursor, empty_in_a_row = rng.permutation(len(ds.segments)), 0, 0
    pending, out = [], {"context": [], "target": [], "instrument": [], "song": []}

    def flush():
        waves = torch.stack([c for c, _, _, _ in pending] + [t for _, t, _, _ in pending])   # [2b, S]
        tok = encode(waves).to("cpu", torch.int16)                                         # [2b, Q, T]
        out["context"].append(tok[:len(pending)])
        out["target"].append(tok[len(pending):])
        out["instrument"] += [k for _, _, k, _ in pending]
        out["song"] += [s for _, _, _, s in pending]
        pending.clear()

    drawn = 0
    with tqdm(total=n_pairs, desc=desc, unit="pair", disable=not progress) as bar:
        while drawn < n_pairs:
            seg = int(order[cursor % len(order)])
            cursor += 1
            items = ds.segment_pairs(seg, min(per_segment, n_pairs - drawn), rng)
            drawn += len(items)
            empty_in_a_row = 0 if items else empty_in_a_row + 1
            if empty_in_a_row > len(order):
                raise DatasetError(f"no usable (context, target) pair in any segment of {ds.root} [{ds.split}]")
            song = ds.segment_song[seg]
            pending += [(c, t, k, song) for c, t, k in items]
            bar.update(len(items))
            if len(pending) >= batch:
                flush()
    if pending:
        flush()
    return {"context": torch.cat(out["context"]), "target": torch.cat(out["target"]),
            "instrument": torch.tensor(out["instrument"]), "song": torch.tensor(out["song"])}


def split_pool(codec, root: str, split: str, crop_seconds: float, n: int, seed: int, progress: bool = True,
               desc: str = "tokenising pairs", verbose: bool = True) -> dict:
    """n pairs of one split of a Slakh-layout folder, spread over its song segments, tokenised with the codec."""
    ds = StemPairDataset(root, split, codec.sample_rate, crop_seconds, seed=seed, verbose=verbose)
    per_segment = max(1, math.ceil(n / len(ds.segments)))
    return token_pool(ds, lambda wave: tokenize(codec, wave), n, per_segment, seed, progress=progress, desc=desc)


def pool_batches(pool: dict, batch: int, seed: int, step: int, rank: int, accum: int, micro: int):
    """The micro-batches of each step from `step` on: step s draws `batch` pool items with a generator
    seeded by (seed, s), so a resumed run and N processes draw what one process would; each rank takes its slice."""
    while True:
        idx = np.random.default_rng([seed, step]).integers(len(pool["song"]), size=batch)
        mine = torch.from_numpy(idx[rank * accum * micro:(rank + 1) * accum * micro])
        yield [(pool["context"][j].long(), pool["target"][j].long(), pool["instrument"][j]) for j in mine.split(micro)]
        step += 1


@torch.no_grad()
def tokenize(codec, wave: torch.Tensor) -> torch.Tensor:
    """[B, S] waves -> [B, Q, T] tokens on the codec's device."""
    return codec.encode(wave.to(codec.device)[:, None, :])


def loader_batches(codec, root: str, crop_seconds: float, batch: int, seed: int, workers: int, device,
                   step: int, rank: int, accum: int, micro: int, verbose: bool = True):
    """Micro-batches of pairs read and tokenised on the fly; item indices are global: step s uses items
    [s * batch, (s + 1) * batch), each a pure function of (seed, index); each rank takes its slice."""
    ds = StemPairDataset(root, "train", codec.sample_rate, crop_seconds, seed=seed, length=10**12, verbose=verbose)

    def indices(s=step):
        while True:
            first = s * batch + rank * accum * micro
            yield from range(first, first + accum * micro)
            s += 1

    loader = torch.utils.data.DataLoader(
        ds, batch_size=micro, num_workers=workers, pin_memory=device.type == "cuda", sampler=indices(),
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    it = iter(loader)
    while True:
        yield [(tokenize(codec, c), tokenize(codec, t), k) for c, t, k in (next(it) for _ in range(accum))]
