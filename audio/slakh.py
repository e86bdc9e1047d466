"""The Slakh layout read from disk: tracks, their stems and their splits (data.py draws pairs from them).

Layout (as Slakh2100 is distributed; python -m songs.synth writes the same):

    ROOT/[train|validation|test/]TrackNNNNN/metadata.yaml     stems: {SNN: {inst_class, program_num, ...}}
    ROOT/[train|validation|test/]TrackNNNNN/stems/SNN.flac    (or .wav; any rate, any channel count)

Without split folders the tracks are split deterministically by a hash of the track name (80/10/10);
with them, a track name found in two splits is an error (split leakage). A folder of such datasets (the
built-in data: composed songs beside real works) is read as one. The audio files on disk decide which stems
exist: `audio_rendered` flags and `audio_dir` values are unreliable in circulating copies. Stems or tracks
that cannot be used (no audio, no metadata, malformed YAML, no known class, unreadable file) are skipped and
counted in a one-line summary (`summarize`).
"""
from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field

import yaml

from audio.files import AudioError, audio_info
from audio.instruments import stem_class

SPLITS = ("train", "validation", "test")
AUDIO_EXTS = (".flac", ".wav")


class DatasetError(ValueError):
    """A user-facing dataset problem (no tracks, no usable pairs, split leakage, bad arguments)."""


@dataclass
class Stem:
    name: str  # "S00"
    path: str
    instrument: int  # index into instruments.INSTRUMENTS
    sample_rate: int
    frames: int


@dataclass
class Track:
    name: str  # "Track00001"
    path: str
    split: str
    stems: list[Stem] = field(default_factory=list)
    corpus: dict = field(default_factory=dict)  # metadata.yaml's `corpus:` entry (songs/corpus.py's renderings), if any

    @property
    def work(self) -> str:
        """The piece it renders: renderings of one piece (its keys, its chunks) share it; see work_of."""
        return work_of({"corpus": self.corpus})

    @property
    def song(self) -> str:
        """What song-level statistics group by: the work when metadata names one, else the track itself."""
        return self.work or self.path

    @property
    def seconds(self) -> float:
        """Length of the shortest stem in seconds (Slakh stems of one track have equal length)."""
        return min(s.frames / s.sample_rate for s in self.stems) if self.stems else 0.0


def hash_split(track_name: str) -> str:
    """Deterministic 80/10/10 split of a track by a hash of its name (for datasets without split folders)."""
    h = int(hashlib.sha1(track_name.encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 80 else "validation" if h < 90 else "test"


def _track_dirs(root: str) -> list[tuple[str, str]]:
    """(track_dir, split) pairs under root, using split folders when present; checks split leakage."""
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root} (pass the folder that holds TrackNNNNN/ "
                           "or train/ validation/ test/; `python -m songs.synth --out DIR` makes one)")
    split_dirs = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    out = []
    parts = sorted(  # a folder of datasets (the built-in data: composed songs + real works)
        os.path.join(root, d) for d in os.listdir(root)
        if d not in SPLITS and not d.startswith(".") and any(os.path.isdir(os.path.join(root, d, s)) for s in SPLITS))
    if parts and split_dirs:
        raise DatasetError(f"{root} holds both split folders ({', '.join(split_dirs)}) and datasets "
                           f"({', '.join(map(os.path.basename, parts))}): keep one layout (an older demo's data? "
                           "delete the folder and run again)")
    if parts:
        out = [t for p in parts for t in _track_dirs(p)]
        names = Counter(os.path.basename(d) for d, _ in out)
        twice = [n for n, c in names.items() if c > 1]
        if twice:
            raise DatasetError(f"track {twice[0]} appears in two datasets under {root}; rename one")
    elif split_dirs:
        seen: dict[str, str] = {}
        for s in split_dirs:
            for name in sorted(os.listdir(os.path.join(root, s))):
                d = os.path.join(root, s, name)
                if not os.path.isdir(d):
                    continue
                if name in seen:
                    raise DatasetError(f"split leakage: track {name} is in both {seen[name]}/ and {s}/ of "
                                       f"{root}; remove one copy (the Slakh 'redux' splits have none)")
                seen[name] = s
                out.append((d, s))
    else:
        for name in sorted(os.listdir(root)):
            d = os.path.join(root, name)
            if os.path.isdir(d) and not name.startswith("."):
                out.append((d, hash_split(name)))
    return out


def work_of(meta: dict) -> str:
    """The piece a track renders, from metadata.yaml's `corpus: {piece: ...}` entry (songs/corpus.py writes it on every
    key and chunk of a work); "" when there is none (a Slakh song, a composed song: each track its own work)."""
    entry = meta.get("corpus") if isinstance(meta, dict) else None
    piece = entry.get("piece") if isinstance(entry, dict) else None
    return f"corpus:{piece}" if piece is not None else ""


def _read_track(track_dir: str, split: str, skips: Counter) -> Track | None:
    """Parse one track's metadata.yaml and match it with the stem audio on disk; count what is skipped."""
    meta_path = os.path.join(track_dir, "metadata.yaml")
    if not os.path.isfile(meta_path):
        skips["track without metadata.yaml"] += 1
        return None
    try:
        with open(meta_path) as f:
            meta = yaml.safe_load(f)
        stems_meta = meta["stems"]
        if not isinstance(stems_meta, dict):
            raise TypeError("'stems' is not a mapping")
    except Exception:
        skips["track with malformed metadata.yaml"] += 1
        return None
    entry = meta.get("corpus")
    track = Track(os.path.basename(track_dir), track_dir, split, corpus=entry if isinstance(entry, dict) else {})
    stem_dir = os.path.join(track_dir, "stems")  # audio_dir in the metadata is unreliable; disk decides
    for name in sorted(stems_meta):
        info = stems_meta[name] if isinstance(stems_meta[name], dict) else {}
        path = next((os.path.join(stem_dir, name + e) for e in AUDIO_EXTS
                     if os.path.isfile(os.path.join(stem_dir, name + e))), None)
        if path is None:
            skips["stem without audio"] += 1
            continue
        inst = stem_class(info)
        if inst is None:
            skips["stem without a known class (program_num, inst_class)"] += 1
            continue
        try:
            sr, frames, _ = audio_info(path)
        except AudioError:
            skips["unreadable stem"] += 1
            continue
        if frames == 0:
            skips["empty stem"] += 1
            continue
        track.stems.append(Stem(str(name), path, inst, sr, frames))
    return track


def scan_tracks(root: str, split: str = "all") -> tuple[list[Track], Counter]:
    """All tracks of one split ("train", "validation", "test" or "all") and a Counter of what was skipped."""
    if split not in SPLITS + ("all",):
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    skips: Counter = Counter()
    tracks = []
    for d, s in _track_dirs(root):
        if split != "all" and s != split:
            continue
        t = _read_track(d, s, skips)
        if t is None:
            continue
        if len(t.stems) < 2:
            skips["track with fewer than 2 stems"] += 1
            continue
        tracks.append(t)
    return tracks, skips


def summarize(tracks: list[Track], skips: Counter, split: str) -> str:
    """One line: tracks and stems used, and each kind of skip with its count."""
    n_stems = sum(len(t.stems) for t in tracks)
    line = f"{split}: {len(tracks)} tracks, {n_stems} stems"
    if skips:
        line += "; skipped " + ", ".join(f"{n} {k}" for k, n in sorted(skips.items()))
    return line


def find_tracks(data_dir: str, splits: tuple[str, ...]) -> list[list[str]]:
    """Audio files of a Slakh-layout folder grouped by track: [[stems/S00.flac, ..., mix.flac], ...].

    Tracks and their splits come from scan_tracks (split folders, or the hash split without them), so
    the codec is fitted (spectral/fit.py) on the same training tracks the model sees and measured (`bench.py
    codec`, metrics/roundtrip.py) on held-out ones. Folders without metadata.yaml fall back to audio_files_by_track.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    tracks = []
    for split in splits:
        try:
            found, _ = scan_tracks(data_dir, split)
        except DatasetError:
            found = []
        for t in found:
            mix = [p for p in glob.glob(os.path.join(t.path, "mix.*")) if p.lower().endswith(AUDIO_EXTS)]
            tracks.append([s.path for s in t.stems] + sorted(mix)[:1])
    return tracks or audio_files_by_track(data_dir, splits)


def audio_files_by_track(data_dir: str, splits: tuple[str, ...]) -> list[list[str]]:
    """Audio files of a folder without metadata, grouped by track folder (stems/ and mix.*), else one per file."""
    present = [s for s in SPLITS if os.path.isdir(os.path.join(data_dir, s))]
    roots = [os.path.join(data_dir, s) for s in splits if s in present] if present else [data_dir]
    files = sorted(p for r in roots for p in glob.glob(os.path.join(r, "**", "*"), recursive=True)
                   if p.lower().endswith(AUDIO_EXTS) and os.path.isfile(p))
    tracks: dict[str, list[str]] = {}
    for p in files:
        parent = os.path.dirname(p)
        if os.path.basename(parent) == "stems":
            tracks.setdefault(os.path.dirname(parent), []).append(p)
        elif os.path.basename(p).lower().startswith("mix") and os.path.isdir(os.path.join(parent, "stems")):
            tracks.setdefault(parent, []).append(p)
        else:
            tracks.setdefault(p, []).append(p)
    if not tracks:
        where = f"the {'/'.join(splits)} split of " if present else ""
        raise FileNotFoundError(f"no .flac/.wav audio found under {where}{data_dir} "
                                "(expected TrackNNNNN/stems/SNN.flac, optionally under train/ validation/ test/)")
    return list(tracks.values())
