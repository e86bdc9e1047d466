"""Slakh-layout stem datasets and (context-mix, target-stem) training pairs (Sec. 2 and Sec. 3).

One import away: the Slakh layout on disk (TrackNNNNN/metadata.yaml, stems/SNN.flac, splits; what is skipped
and why) is audio/slakh.py, and Sec. 3's instrument table (Slakh's 17 classes plus the null entry, a stem's
class from its MIDI program) is audio/instruments.py.

Pairs (Sec. 2, Sec. 3): songs are cut into 1-minute segments; an item is a random 20 s crop of a segment
in which a random non-empty subset of the sounding stems is summed into the context-mix and one other
sounding stem is the target; crops whose context or target is below `silence_db` are redrawn. Which stems
may sound in a crop is read from per-second activity maps made once at scan time (audio/activity.py, cached), so
an item decodes the crops of its chosen stems only.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from audio.activity import activity_maps, crop_may_sound, file_stamp
from audio.files import AudioError, fit_length, read_audio, resample, to_mono
from audio.slakh import DatasetError, Stem, Track, scan_tracks, summarize

CROP_SECONDS = 20.0  # the paper's training crop (Sec. 3); generation's window defaults to it (decode.py)
DEFAULT_SILENCE_DB = -50.0  # RMS over the whole crop, dBFS; digital silence and faint noise fall below


def pair_count(m: int) -> int:
    """Number of (context subset, target stem) pairs of a song with m stems: m/2 (2^m - 2) (Sec. 2)."""
    if m < 2:
        return 0
    return m * (2 ** (m - 1) - 1)


def enumerate_pairs(m: int):
    """Yield every (context tuple, target) pair of m stems: non-empty context, target not in it (Sec. 2)."""
    for k in range(1, m):
        for ctx in combinations(range(m), k):
            for t in range(m):
                if t not in ctx:
                    yield ctx, t


def rms_db(x: np.ndarray) -> float:
    """Root-mean-square level of a buffer in dBFS (-inf for digital silence)."""
    if x.size == 0:
        return -math.inf
    r = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return 20.0 * math.log10(r) if r > 0 else -math.inf


# ---------------------------------------------------------------------------------------------- pairs


def segments(track: Track, segment_seconds: float, crop_seconds: float) -> list[tuple[float, float]]:
    """Cut a song into segments of `segment_seconds` (Sec. 3); a tail shorter than a crop joins the one before."""
    dur = track.seconds
    n = max(1, int(dur // segment_seconds))
    bounds = [(k * segment_seconds, (k + 1) * segment_seconds) for k in range(n)]
    rest = dur - n * segment_seconds
    if rest >= crop_seconds:
        bounds.append((n * segment_seconds, dur))
    else:
        bounds[-1] = (bounds[-1][0], dur)
    return bounds


def crop_frames(stem: Stem, start_s: float, seconds: float) -> tuple[int, int]:
    """(first frame, frame count) of a crop in the file's own frames."""
    return int(round(start_s * stem.sample_rate)), int(round(seconds * stem.sample_rate))


def read_crop(stem: Stem, start_s: float, seconds: float) -> np.ndarray:
    """Read a crop (seeking, in the file's own frames), downmix to mono; [S] at the file's rate."""
    start, frames = crop_frames(stem, start_s, seconds)
    x, _ = read_audio(stem.path, start, frames)
    x = to_mono(x)
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{stem.path} contains NaN or infinite samples")
    return x


def target_key(stem: Stem, start_s: float, seconds: float, sample_rate: int) -> str:
    """The identity of a target crop: its file (path, size, mtime), its frames there and the output rate and length.

    Equal keys mean equal target audio, so its tokens can be reused; a file rewritten since gets a new key.
    """
    size, mtime = file_stamp(stem.path)
    start, frames = crop_frames(stem, start_s, seconds)
    return (f"{os.path.abspath(stem.path)}|{size}|{mtime}|{stem.sample_rate}|{start}|{frames}|"
            f"{sample_rate}|{int(round(seconds * sample_rate))}")


def choose_pair(n_sounding: int, rng: np.random.Generator) -> tuple[list[int], int]:
    """Draw a (context subset, target) pair uniformly among the m/2 (2^m - 2) pairs of m stems (Sec. 2).

    The target is uniform over the stems, the context uniform over the non-empty subsets of the rest;
    every target has the same number of subsets, so every pair is equally likely.
    """
    target = int(rng.integers(n_sounding))
    rest = [i for i in range(n_sounding) if i != target]
    while True:
        keep = rng.random(len(rest)) < 0.5
        if keep.any():
            return [r for r, k in zip(rest, keep) if k], target


@dataclass(frozen=True)
class PairDraw:
    """How StemPairDataset draws a training pair from a song: the crop, where it may start, when a stem counts as
    silent, and how often to try.

    Args:
        sample_rate: output rate (the codec's); crops are resampled with soxr.
        crop_seconds: crop length; S = round(crop_seconds * sample_rate). A song shorter than the crop is
            zero-padded at the end to S.
        segment_seconds: songs are cut into segments of this length; item i uses segment i % n_segments.
        silence_db: a stem, context-mix or target whose RMS over the crop is below this (dBFS) is silent.
        start_grid: with a value (seconds), crops start at multiples of it from their segment's start, so
            that a (stem, start) recurs and its target tokens can be cached (pool.TokenCache); None: anywhere.
        max_tries: crops drawn per item before giving up with DatasetError (never an endless loop).
    """
    sample_rate: int = 32000
    crop_seconds: float = CROP_SECONDS
    segment_seconds: float = 60.0
    silence_db: float = DEFAULT_SILENCE_DB
    start_grid: float | None = None
    max_tries: int = 50

    def __post_init__(self):
        if self.crop_seconds <= 0 or self.segment_seconds <= 0 or self.sample_rate <= 0:
            raise DatasetError("crop_seconds, segment_seconds and sample_rate must be positive")
        if self.max_tries < 1:
            raise DatasetError("max_tries must be at least 1")
        if self.start_grid is not None and self.start_grid <= 0:
            raise DatasetError("start_grid must be positive (or None for crops starting anywhere)")


class StemPairDataset(torch.utils.data.Dataset):
    """Training pairs (context-mix, target stem, instrument id) from a Slakh-layout folder (Sec. 2, Sec. 3).

    Args:
        root: dataset folder (TrackNNNNN/ folders, optionally inside train/ validation/ test/).
        split: "train", "validation", "test" or "all".
        draw: how a pair is drawn (PairDraw: output rate, crop, segments, silence, crop start grid, tries).
        seed: with a seed, item i is a pure function of (seed, i) (a repeatable validation/test set).
            Without it, items draw from torch.initial_seed() (which torch seeds per DataLoader worker and
            epoch) and a per-dataset counter: fresh randomness, repeatable under torch.manual_seed.
        length: len(ds); defaults to the number of segments.
        check: draw one item at construction so that a dataset with no usable pair fails at once.
        verbose: print the one-line summary of used and skipped tracks/stems to stderr.
        progress: show a progress bar while activity maps are computed (only with verbose).
        cache_dir: folder for the activity cache (default: ROOT/.stemgen-cache, else the user's cache).
        target_keys: items carry a 4th element, the target crop's identity (`target_key`).
    Items: (context FloatTensor [S], target FloatTensor [S], instrument int[, target key str]).
    """

    def __init__(self, root: str, split: str = "train", draw: PairDraw = PairDraw(), seed: int | None = None,
                 length: int | None = None, check: bool = True, verbose: bool = True, cache_dir: str | None = None,
                 target_keys: bool = False, progress: bool = True):
        self.root, self.split = root, split
        self.sample_rate, self.crop_seconds = int(draw.sample_rate), float(draw.crop_seconds)
        self.segment_seconds = float(draw.segment_seconds)
        self.n_samples = int(round(draw.crop_seconds * draw.sample_rate))
        self.silence_db, self.seed, self.max_tries = float(draw.silence_db), seed, int(draw.max_tries)
        self.start_grid, self.target_keys = draw.start_grid, bool(target_keys)
        self.tracks, self.skips = scan_tracks(root, split)
        self.summary = summarize(self.tracks, self.skips, split)
        if verbose:
            print(f"data: {root}: {self.summary}", file=sys.stderr)
        if not self.tracks:
            raise DatasetError(f"no usable tracks in split {split!r} of {root} ({self.summary}); a track needs "
                               "metadata.yaml and at least 2 stems with audio in stems/SNN.flac|wav")
        # (track, start, end), and the song of each: the index of its work (Track.song), so that the renderings
        # of one piece in several keys count as one song in song-level statistics and other-song controls
        self.segments, self.segment_song, songs = [], [], {}
        for t in self.tracks:
            song = songs.setdefault(t.song, len(songs))
            for a, b in segments(t, self.segment_seconds, self.crop_seconds):
                self.segments.append((t, a, b))
                self.segment_song.append(song)
        self.length = len(self.segments) if length is None else int(length)
        self._draws = 0
        # {stem path: mean square per second}: which stems may sound in a crop, known before reading it
        self.activity = activity_maps(root, [s for t in self.tracks for s in t.stems], cache_dir,
                                     progress=verbose and progress)
        if check:
            self._draw(0, np.random.default_rng([0 if seed is None else seed, 2**32]), any_segment=True)

    def __len__(self) -> int:
        return self.length

    def _rng(self, i: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, i])
        self._draws += 1
        return np.random.default_rng([torch.initial_seed() % 2**63, i, self._draws])

    def _may_sound(self, stem: Stem, start: int, n: int) -> bool:
        """False when the activity map shows the stem silent over file frames [start, start + n)."""
        ms = self.activity.get(stem.path)
        return ms is None or crop_may_sound(ms, stem.sample_rate, stem.frames, start, n, self.silence_db)

    def _pair_from_activity(self, track: Track, start: float, rng: np.random.Generator):
        """Pick a pair as _pair_from_crops does, reading the crops of the chosen stems only.

        The candidates are the stems the activity map does not rule out. A pair is drawn uniformly among
        the candidates' pairs and its crops are read; a stem that is silent after all (rms_db) leaves the
        candidates and the pair is drawn again. Every draw is uniform over pairs of a set that holds all
        sounding stems, and is kept only when it lies among them, so the pair kept is uniform over the pairs
        of the sounding stems, as in _pair_from_crops; a crop with fewer than two gives None, as there.
        """
        candidates = [k for k, s in enumerate(track.stems) if self._may_sound(s, *crop_frames(s, start, self.crop_seconds))]
        crops, level = {}, {}
        while len(candidates) >= 2:
            ctx_idx, tgt = choose_pair(len(candidates), rng)
            ctx_idx, tgt = [candidates[k] for k in ctx_idx], candidates[tgt]
            for k in ctx_idx + [tgt]:
                if k not in crops:
                    crops[k] = read_crop(track.stems[k], start, self.crop_seconds)
                    level[k] = rms_db(crops[k])
            silent = {k for k in ctx_idx + [tgt] if level[k] < self.silence_db}
            if not silent:
                return self._mix_pair(track, crops, ctx_idx, tgt)
            candidates = [k for k in candidates if k not in silent]
        return None

    def _pair_from_crops(self, track: Track, crops: list[np.ndarray], rng: np.random.Generator):
        """Pick a pair among the sounding stems of one crop (each crop at its file's rate), mix and check it."""
        sounding = [k for k, x in enumerate(crops) if rms_db(x) >= self.silence_db]
        if len(sounding) < 2:
            return None
        ctx_idx, tgt = choose_pair(len(sounding), rng)
        return self._mix_pair(track, crops, [sounding[k] for k in ctx_idx], sounding[tgt])

    def _mix_pair(self, track: Track, crops, ctx_idx: list[int], tgt: int):
        """Sum the context stems' crops and take the target's, at self.sample_rate; None when either is silent.

        Returns (context, target, target class, target stem index, the context stems' classes, sorted)."""

        def at_rate(k):  # [S] at self.sample_rate
            return fit_length(resample(crops[k], track.stems[k].sample_rate, self.sample_rate), self.n_samples)

        target = at_rate(tgt)
        context = np.sum([at_rate(k) for k in ctx_idx], axis=0)
        if rms_db(context) < self.silence_db or rms_db(target) < self.silence_db:
            return None
        return (torch.from_numpy(context.astype(np.float32)), torch.from_numpy(target.astype(np.float32)),
                track.stems[tgt].instrument, tgt, tuple(sorted({track.stems[k].instrument for k in ctx_idx})))

    def segment_pairs(self, index: int, k: int, rng: np.random.Generator) -> list[tuple]:
        """Up to k (context, target, instrument, context classes) items from segment `index`, drawn from the
        distribution __getitem__ draws from, reading each stem once.

        The 4th element is the sorted tuple of the classes of the stems summed into the context (listening.py
        picks other songs' contexts by it).

        For pools of pre-tokenised pairs: one read of the segment serves k crops. Returns fewer than k
        items when max_tries * k crops do not give them (a mostly silent segment).
        With activity maps, a stem's segment is read only once a crop needs it: stems the map shows silent in
        a crop take part as empty (silent) crops, so the items are the ones reading every stem would give.
        """
        track, a, b = self.segments[index]
        whole: dict[int, np.ndarray] = {}
        items = []
        try:
            for _ in range(self.max_tries * k):
                start = self._crop_offset(b - a, rng)
                crops = [self._segment_crop(track.stems[j], j, whole, a, b, start) for j in range(len(track.stems))]
                item = self._pair_from_crops(track, crops, rng)
                if item is not None:
                    items.append(item[:3] + item[4:5])
                    if len(items) == k:
                        break
        except AudioError as e:
            self._skip_bad_stem(track, e)
            return []
        return items

    def _segment_crop(self, stem: Stem, j: int, whole: dict, a: float, b: float, start: float) -> np.ndarray:
        """The crop at `start` s into segment [a, b) of stem j, sliced from its segment (read on first need,
        kept in `whole`); an empty crop when the activity map shows it silent there."""
        seg_start, seg_len = crop_frames(stem, a, b - a)
        offset, n = crop_frames(stem, start, self.crop_seconds)
        if not self._may_sound(stem, seg_start + offset, max(0, min(n, seg_len - offset))):
            return np.zeros(0, np.float32)
        if j not in whole:
            whole[j] = read_crop(stem, a, b - a)
        return whole[j][offset:][:n]

    def _skip_bad_stem(self, track: Track, error: AudioError) -> None:
        """Drop the stem named in the error from its track, count it and say so once."""
        bad = [s for s in track.stems if s.path in str(error)]
        if not bad:
            raise DatasetError(f"cannot read a stem of {track.path}: {error}")
        for s in bad:
            track.stems.remove(s)
        self.skips["unreadable or non-finite stem"] += len(bad)
        print(f"data: skipping {', '.join(s.path for s in bad)}: {error}", file=sys.stderr)

    def _crop_offset(self, segment_seconds: float, rng: np.random.Generator) -> float:
        """Where a crop starts in a segment: uniform, or uniform over the multiples of start_grid that fit."""
        room = max(0.0, segment_seconds - self.crop_seconds)
        if not self.start_grid:
            return float(rng.random()) * room
        return self.start_grid * int(rng.integers(int(room // self.start_grid) + 1))

    def _draw(self, i: int, rng: np.random.Generator, any_segment: bool = False):
        """Up to max_tries crops: the first ones from segment i, later ones from random segments."""
        for attempt in range(self.max_tries):
            if any_segment or attempt >= self.max_tries // 2:
                track, a, b = self.segments[int(rng.integers(len(self.segments)))]
            else:
                track, a, b = self.segments[i % len(self.segments)]
            start = a + self._crop_offset(b - a, rng)
            try:
                item = self._pair_from_activity(track, start, rng)
            except AudioError as e:  # a broken stem: skip and count it, never stop a long run
                self._skip_bad_stem(track, e)
                continue
            if item is not None:
                if self.target_keys:
                    return item[:3] + (target_key(track.stems[item[3]], start, self.crop_seconds, self.sample_rate),)
                return item[:3]
        raise DatasetError(
            f"no usable (context, target) pair in {self.max_tries} crops of {self.root} [{self.split}]: fewer than "
            f"two stems are above silence_db={self.silence_db} dBFS in them. Use a dataset where several stems "
            "play at once, or lower silence_db / raise max_tries")

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self._draw(i, self._rng(i))
