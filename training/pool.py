"""Where training tokens come from: pairs tokenised on the fly, or a pool of pairs tokenised once.

The paper's recipe draws fresh (context-mix, target) pairs on the fly and tokenises them on the training
device (`loader_batches`). On a small machine, reading and mixing about ten stems per item costs more than the
model step; the demo therefore draws a pool of pairs once (`token_pool`: each song segment read once for
several crops, drawn as data.py draws pairs), tokenises it, and trains from it (`pool_batches`), with fresh
masks and condition dropout at every use. Validation pairs are drawn the same way, each kept with the song it
comes from, for song-level statistics (listening.py). Either way step s uses items that are a function of
(seed, s), so a resumed run, and N processes, draw what one uninterrupted process would.

On the fly, the target of a pair is one stem's crop, so its tokens can be kept and reused when the same crop
comes again (`TokenCache`, with crop starts on a grid: data.PairDraw(start_grid=...)); the context is
a random sub-mix and is encoded at every step. Encoding can run under bf16 autocast (`encode_dtype`);
`token_agreement` measures how often its tokens equal fp32's.
"""
from __future__ import annotations

import hashlib
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from data import DatasetError, PairDraw, StemPairDataset
from masking import harmony_plan
from training.distributed import is_main
from audio.instruments import class_matrix


@dataclass(frozen=True)
class Shard:
    """One process's share of every step from `step` on: the rank-th slice of each step's batch, taken as
    `accum` micro-batches of `micro` examples."""
    step: int = 0
    rank: int = 0
    accum: int = 1
    micro: int = 1

    @property
    def first(self) -> int:
        """This process's first example within a step's batch."""
        return self.rank * self.accum * self.micro

    @property
    def size(self) -> int:
        """Examples this process takes from each step's batch."""
        return self.accum * self.micro


def token_pool(ds: StemPairDataset, encode, n_pairs: int, per_segment: int, seed: int, batch: int = 32,
               progress: bool = True, desc: str = "tokenising pairs", negative=None) -> dict:
    """Draw n_pairs items segment by segment (in a seeded order, per_segment each) and tokenise them.

    Args:
        ds: the dataset whose pairs are drawn (its `segment_pairs`).
        encode: waves FloatTensor [B, S] -> tokens LongTensor [B, Q, T] (the codec).
        negative: optional, context waves [B, S] -> tokens [B, Q, T] of the harmony term's negative.
    Returns:
        dict of context, target (int16 [N, Q, T], on the CPU), instrument (long [N]), song (long [N], the
        pair's ds.segment_song: the renderings of one work share it; for song-level statistics) and
        context_classes (bool [N, len(INSTRUMENTS)], the classes of the stems summed into each pair's context);
        with `negative`, also harmony (int16 [N, Q, T]).
    """
    if n_pairs < 1 or per_segment < 1:
        raise DatasetError("a token pool needs n_pairs >= 1 and per_segment >= 1")
    rng = np.random.default_rng([seed, 2**31])
    order, cursor, empty_in_a_row = rng.permutation(len(ds.segments)), 0, 0
    pending, out = [], {"context": [], "target": [], "instrument": [], "song": [], "context_classes": []}

    def flush():
        waves = torch.stack([c for c, _, _, _, _ in pending] + [t for _, t, _, _, _ in pending])   # [2b, S]
        tok = encode(waves).to("cpu", torch.int16)                                               # [2b, Q, T]
        if negative is not None:
            out.setdefault("harmony", []).append(negative(waves[:len(pending)]).to("cpu", torch.int16))
        out["context"].append(tok[:len(pending)])
        out["target"].append(tok[len(pending):])
        out["instrument"] += [k for _, _, k, _, _ in pending]
        out["context_classes"] += [classes for _, _, _, classes, _ in pending]
        out["song"] += [s for _, _, _, _, s in pending]
        pending.clear()

    drawn = 0
    if not progress:
        print(f"{desc}: tokenising {n_pairs} pairs (no progress bar)", file=sys.stderr, flush=True)
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
            pending += [(c, t, k, classes, song) for c, t, k, classes in items]
            bar.update(len(items))
            if len(pending) >= batch:
                flush()
    if pending:
        flush()
    harmony = {"harmony": torch.cat(out["harmony"])} if negative is not None else {}
    return {"context": torch.cat(out["context"]), "target": torch.cat(out["target"]),
            "instrument": torch.tensor(out["instrument"]), "song": torch.tensor(out["song"]),
            "context_classes": class_matrix(out["context_classes"]), **harmony}


def harmony_negative(codec, segment_seconds: float, seed: int):
    """waves [B, S] -> tokens of each wave with its chords moved to other keys, beat by beat, its timing kept
    (masking.harmony_plan, codec.encode_transposed): the harmony term's negative. Seeded, so a pool drawn again
    gets the same negatives."""
    g = torch.Generator().manual_seed(seed)
    segment = max(1, round(segment_seconds * codec.frame_rate))

    def negative(waves: torch.Tensor) -> torch.Tensor:
        frames = math.ceil(waves.shape[-1] / codec.hop)
        return codec.encode_transposed(waves[:, None], harmony_plan(len(waves), frames, segment, g))
    return negative


def split_pool(codec, root: str, split: str, crop_seconds: float, n: int, seed: int, progress: bool = True,
               desc: str = "tokenising pairs", verbose: bool = True, harmony_segment: float | None = None) -> dict:
    """n pairs of one split of a Slakh-layout folder, spread over its song segments, tokenised with the codec;
    with harmony_segment (seconds), each context's harmony negative too (harmony_negative)."""
    ds = StemPairDataset(root, split, PairDraw(codec.sample_rate, crop_seconds), seed=seed, verbose=verbose,
                         progress=progress)
    per_segment = max(1, math.ceil(n / len(ds.segments)))
    negative = None if harmony_segment is None else harmony_negative(codec, harmony_segment, seed)
    return token_pool(ds, lambda wave: tokenize(codec, wave), n, per_segment, seed, progress=progress, desc=desc,
                      negative=negative)


def pool_batches(pool: dict, batch: int, seed: int, shard: Shard):
    """The micro-batches of each step from shard.step on: step s draws `batch` pool items with a generator
    seeded by (seed, s), so a resumed run and N processes draw what one process would; each rank takes its slice."""
    step = shard.step
    while True:
        idx = np.random.default_rng([seed, step]).integers(len(pool["song"]), size=batch)
        mine = torch.from_numpy(idx[shard.first:shard.first + shard.size])
        yield [(pool["context"][j].long(), pool["target"][j].long(), pool["instrument"][j],
                pool["harmony"][j].long() if "harmony" in pool else None) for j in mine.split(shard.micro)]
        step += 1


ENCODE_DTYPES = ("fp32", "bf16")


@torch.no_grad()
def tokenize(codec, wave: torch.Tensor, encode_dtype: str = "fp32") -> torch.Tensor:
    """[B, S] waves -> [B, Q, T] tokens on the codec's device; "bf16" encodes under bf16 autocast."""
    if encode_dtype not in ENCODE_DTYPES:
        raise ValueError(f"encode_dtype must be one of {ENCODE_DTYPES}, got {encode_dtype!r}")
    with torch.autocast(codec.device.type, dtype=torch.bfloat16, enabled=encode_dtype == "bf16"):
        return codec.encode(wave.to(codec.device)[:, None, :])


def token_agreement(codec, wave: torch.Tensor) -> list[float]:
    """Per RVQ level, the fraction of tokens of [B, S] waves that bf16 encoding gives as fp32 encoding does.

    Runs wherever torch autocasts to bf16 (CUDA; CPU too, slowly). A level's codeword is chosen on the
    residual of the levels before it, so a difference at one level tends to carry on to the finer ones.
    """
    a, b = tokenize(codec, wave, "fp32"), tokenize(codec, wave, "bf16")
    return [float((a[:, q] == b[:, q]).float().mean()) for q in range(a.shape[1])]


def codec_fingerprint(codec) -> str:
    """A hash of everything that decides a codec's tokens: its scalar settings and every parameter tensor."""
    h = hashlib.sha1(type(codec).__name__.encode())
    tensors = dict(codec.model.state_dict()) if hasattr(codec, "model") else {}
    for name, value in sorted(vars(codec).items()):
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, (int, float, str, bool)):
            h.update(f"{name}={value!r};".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TokenCache:
    """Tokens of target crops kept in memory, least recently used dropped first, up to max_bytes.

    Keys are (codec fingerprint, encode dtype, data.target_key): the crop's file with its size and mtime, its
    frames, the output rate. A rewritten stem file, another codec or other codec weights, or the other encode
    dtype never hit an old entry. Entries are int16 on the CPU (int32 for codebooks over 32767 entries).
    """

    def __init__(self, max_bytes: int, encode_dtype: str = "fp32"):
        if max_bytes <= 0:
            raise ValueError("a token cache needs max_bytes > 0")
        self.max_bytes, self.encode_dtype = int(max_bytes), encode_dtype
        self.entries: OrderedDict = OrderedDict()
        self.bytes = self.hits = self.misses = 0
        self._fingerprints: dict[int, tuple] = {}   # id(codec) -> (codec, fingerprint): the codec is kept alive

    def fingerprint(self, codec) -> str:
        if id(codec) not in self._fingerprints:
            self._fingerprints[id(codec)] = (codec, codec_fingerprint(codec))
        return self._fingerprints[id(codec)][1]

    def _put(self, key, tokens: torch.Tensor) -> None:
        size = tokens.numel() * tokens.element_size()
        if size > self.max_bytes:
            return
        self.entries[key] = tokens
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def tokens(self, codec, wave: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """[B, S] target waves with their keys -> [B, Q, T] tokens on the codec's device: cached ones reused,
        the rest encoded together (in this cache's encode dtype) and kept."""
        full = [(self.fingerprint(codec), self.encode_dtype, k) for k in keys]
        found = []
        for key in full:
            t = self.entries.get(key)
            if t is not None:
                self.entries.move_to_end(key)
            found.append(t)
        missing = [i for i, t in enumerate(found) if t is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = tokenize(codec, wave[missing], self.encode_dtype)
            small = fresh.to("cpu", torch.int16 if codec.bins <= 2**15 else torch.int32)
            for i, t in zip(missing, small):
                found[i] = t
                self._put(full[i], t.clone())
        return torch.stack(found).to(codec.device).long()


def loader_batches(codec, recipe, root: str, shard: Shard, device, token_cache: TokenCache | None = None,
                   verbose: bool = True):
    """Micro-batches of pairs read and tokenised on the fly; item indices are global: step s uses items
    [s * batch, (s + 1) * batch), each a pure function of (seed, index); each rank takes its slice.

    `recipe` is train.Recipe (or anything with its crop_seconds, batch, seed, workers, crop_grid and
    encode_dtype). With a token cache, targets whose crop was encoded before take their kept tokens (crops
    start on the crop grid so that they recur); the context sub-mixes are encoded at every step.
    """
    draw = PairDraw(codec.sample_rate, recipe.crop_seconds, start_grid=recipe.crop_grid or None)
    ds = StemPairDataset(root, "train", draw, seed=recipe.seed, length=10**12, verbose=verbose,
                         target_keys=token_cache is not None)

    def indices(s=shard.step):
        while True:
            first = s * recipe.batch + shard.first
            yield from range(first, first + shard.size)
            s += 1

    workers = recipe.workers
    loader = torch.utils.data.DataLoader(
        ds, batch_size=shard.micro, num_workers=workers, pin_memory=device.type == "cuda", sampler=indices(),
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    it = iter(loader)
    while True:
        micro_batches = []
        for _ in range(shard.accum):
            c, t, k, *keys = next(it)
            target = (token_cache.tokens(codec, t, keys[0]) if token_cache else
                      tokenize(codec, t, recipe.encode_dtype))
            micro_batches.append((tokenize(codec, c, recipe.encode_dtype), target, k, None))
        yield micro_batches


def cache_line(cache: TokenCache | None) -> str:
    """What the end of a run says of its token cache ("" without one)."""
    if cache is None:
        return ""
    return (f"\ntoken cache: {cache.hits} of {cache.hits + cache.misses} target crops reused "
            f"({cache.bytes / 1e6:.1f} MB held)")


def split_batch(batch: int, micro_batch: int, world: int) -> tuple[int, int]:
    """(micro, accum): the largest micro-batch up to --micro-batch that divides this process's share."""
    if batch % world:
        raise ValueError(f"--batch {batch} is not a multiple of the {world} processes")
    per_rank = batch // world
    micro = max(d for d in range(1, min(micro_batch, per_rank) + 1) if per_rank % d == 0)
    return micro, per_rank // micro


def training_batches(codec, recipe, data_dir: str, shard: Shard, device, progress: bool):
    """The micro-batches of every step from shard.step on: from a pool tokenised once (pool_pairs) or on the
    fly; with the target-token cache (None when off). `recipe` is train.Recipe."""
    if recipe.pool_pairs:
        harmony = recipe.objective.harmony_segment if recipe.objective.harmony_weight > 0 else None
        train_pool = split_pool(codec, data_dir, "train", recipe.crop_seconds, recipe.pool_pairs, recipe.seed,
                                progress and is_main(), "training pairs", is_main(), harmony)
        return pool_batches(train_pool, recipe.batch, recipe.seed, shard), None
    cache = (TokenCache(int(recipe.token_cache_gb * 1e9), recipe.encode_dtype) if recipe.token_cache_gb > 0
             else None)
    return loader_batches(codec, recipe, data_dir, shard, device, cache, is_main()), cache
