"""Per-stem activity maps: the mean square of every second of every stem, computed once and cached.

Drawing a training pair needs the stems that sound in a crop. Reading every stem's crop to find them costs
about ten FLAC decodes per item on Slakh; the map answers the question from a few numbers per second, so
that only the stems of the chosen pair are read (data.StemPairDataset).

The map of a stem is float32 [ceil(frames / sr)]: the mean square of the mono downmix over each second of
the file (the last one over the frames it has), at the file's own rate. From it an upper bound of a crop's
mean square follows (`crop_may_sound`): the energy of every second the crop touches, over the crop's length.
A stem whose bound is below the silence threshold is silent in the crop by data.rms_db's rule too.

Cache: one .npz per dataset root, `ROOT/.stemgen-cache/activity-v1.npz`; where ROOT cannot be written, the
user's cache folder ($XDG_CACHE_HOME or ~/.cache)/stemgen/activity-<hash of ROOT>-v1.npz; the folder can be
named with `cache_dir` or $STEMGEN_CACHE_DIR. Entries are keyed by the stem's path relative to ROOT, checked
against its size and mtime (nanoseconds) and frame count; an entry whose file changed is recomputed, and a
file of another version is ignored. When no folder can be written the maps are kept in memory, said once.
Many maps are computed in parallel processes (up to 8). Under torchrun every process computes the maps it
lacks, so before a first multi-GPU run the cache is best built by one process:
`python -c "import data; data.StemPairDataset('DIR')"`.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import sys

import numpy as np
import soundfile as sf
from tqdm import tqdm

from audio.files import AudioError, atomic_write, to_mono

VERSION = 1
CACHE_FOLDER = ".stemgen-cache"  # inside the dataset root
ENV_CACHE_DIR = "STEMGEN_CACHE_DIR"
PROGRESS_FROM = 50  # a progress bar when at least this many stems are computed
BOUND_MARGIN = 1e-5  # relative slack on the bound: float32 storage and summation order never make it too low

_warned: set[str] = set()


def stem_activity(path: str) -> np.ndarray:
    """Mean square of the mono downmix over each second of an audio file: float32 [ceil(frames / sr)].

    One streaming pass in blocks of whole seconds; each second is computed as data.rms_db computes a crop
    (float32 mono downmix, float64 mean of squares). Non-finite samples give a non-finite entry.
    """
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            out = []
            for block in f.blocks(blocksize=sr * 30, dtype="float32", always_2d=True):
                x = to_mono(np.ascontiguousarray(block.T))
                full = len(x) // sr * sr
                out.append(np.mean(np.square(x[:full].reshape(-1, sr), dtype=np.float64), axis=1))
                if full < len(x):
                    out.append([np.mean(np.square(x[full:], dtype=np.float64))])
    except Exception as e:
        raise AudioError(f"cannot read audio file {path}: {e}") from None
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _activity_or_none(path: str) -> np.ndarray | None:
    try:
        return stem_activity(path)
    except AudioError:
        return None                       # no map: the stem is read as before, and reading reports it


def compute_maps(paths: list[str], progress: bool, workers: int | None = None) -> list[np.ndarray | None]:
    """stem_activity of many files (None where one cannot be read), in parallel processes when there are many."""
    workers = min(workers or os.cpu_count() or 1, 8, max(1, len(paths) // PROGRESS_FROM))
    bar = dict(total=len(paths), desc="activity map", unit="stem", disable=not progress or len(paths) < PROGRESS_FROM)
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        return [_activity_or_none(p) for p in tqdm(paths, **bar)]
    with mp.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(_activity_or_none, paths, chunksize=4), **bar))


def crop_may_sound(ms: np.ndarray, sr: int, frames: int, start: int, n: int, silence_db: float) -> bool:
    """False only when the crop [start, start + n) (file frames) is surely below silence_db by rms_db's rule.

    The crop's energy is at most that of the seconds it touches; the crop read is cut at the file's end, as
    audio.read_audio cuts it. A non-finite map entry (NaN samples) may sound: reading the crop reports it.
    """
    end = min(start + n, frames)
    if end <= start:
        return False                                  # nothing to read: rms_db gives -inf
    k0, k1 = start // sr, (end - 1) // sr + 1
    if k1 > len(ms):
        return True                                   # a map shorter than the file says: no bound, read it
    lengths = np.minimum(sr, frames - np.arange(k0, k1) * sr)
    bound = float(np.sum(ms[k0:k1].astype(np.float64) * lengths)) / (end - start)
    if not math.isfinite(bound):
        return True
    return bound * (1 + BOUND_MARGIN) >= 10.0 ** (silence_db / 10.0)


# ------------------------------------------------------------------------------------------------ cache


def file_stamp(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file: what says it changed, for the activity cache and the token cache."""
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


def cache_candidates(root: str, cache_dir: str | None = None) -> list[str]:
    """Where the cache file of a dataset root may live, in order of preference."""
    name = f"activity-v{VERSION}.npz"
    chosen = cache_dir or os.environ.get(ENV_CACHE_DIR)
    tag = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    if chosen:
        return [os.path.join(chosen, f"activity-{tag}-v{VERSION}.npz")]
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(root, CACHE_FOLDER, name), os.path.join(user, "stemgen", f"activity-{tag}-v{VERSION}.npz")]


def load_cache(path: str) -> dict[str, tuple[int, int, int, np.ndarray]]:
    """{relative path: (size, mtime_ns, frames, map)} from a cache file; {} when absent, unreadable or of another version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != VERSION:
                return {}
            keys, meta, offsets, values = z["keys"], z["meta"], z["offsets"], z["values"]
    except Exception:
        return {}
    return {str(k): (int(m[0]), int(m[1]), int(m[2]), values[offsets[i]:offsets[i + 1]])
            for i, (k, m) in enumerate(zip(keys, meta))}


def save_cache(path: str, entries: dict[str, tuple[int, int, int, np.ndarray]]) -> None:
    """Write all entries to one .npz atomically (a temporary file renamed into place)."""
    keys = sorted(entries)
    lengths = [len(entries[k][3]) for k in keys]
    arrays = dict(version=np.int64(VERSION), keys=np.array(keys, dtype=str),
                  meta=np.array([entries[k][:3] for k in keys], dtype=np.int64).reshape(-1, 3),
                  offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                  values=np.concatenate([entries[k][3] for k in keys] or [np.zeros(0)]).astype(np.float32))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_write(path, write, ".npz", overwrite=True)


def _say_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)


def activity_maps(root: str, stems: list, cache_dir: str | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """{stem path: map} for data.Stem objects under root: cached maps whose file is unchanged, the rest computed.

    The cache file is rewritten when something was computed (entries of other stems under root whose files
    still exist are kept, so that the splits of one root share it); an unwritable folder falls back to the
    next candidate, and to memory alone after the last (said once).
    """
    candidates = cache_candidates(root, cache_dir)
    cached = next((c for c in map(load_cache, candidates) if c), {})
    entries, todo, out = dict(cached), [], {}
    for s in stems:
        rel = os.path.relpath(s.path, root)
        try:
            size, mtime = file_stamp(s.path)
        except OSError:
            continue                      # gone since the scan: no map, reading the stem reports it
        hit = cached.get(rel)
        if hit and hit[:3] == (size, mtime, s.frames) and len(hit[3]) == -(-s.frames // s.sample_rate):
            out[s.path] = hit[3]
        else:
            todo.append((s, rel, size, mtime))
    if not todo:
        return out
    for (s, rel, size, mtime), ms in zip(todo, compute_maps([s.path for s, *_ in todo], progress)):
        if ms is not None:
            out[s.path], entries[rel] = ms, (size, mtime, s.frames, ms)
    entries = {k: v for k, v in entries.items() if os.path.isfile(os.path.join(root, k))}
    for path in candidates:
        try:
            save_cache(path, entries)
            return out
        except OSError:
            continue
    _say_once(f"data: cannot write the activity cache ({' or '.join(candidates)}); keeping it in memory, "
              "so it is computed again next time")
    return out
