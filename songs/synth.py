"""The built-in dataset, made the way Slakh2100 was made: MIDI parts rendered with sample-based instruments.

compose.py writes each song as MIDI parts from one shared plan (key, tempo, metre, chords, form), so the
stems are musically related the way real stems are. Each part is rendered here with a General MIDI
SoundFont (pretty_midi's TimGM6mb.sf2 by default, `--soundfont` for any other GM bank) through
tinysoundfont, and the song is written in the Slakh layout that data.py reads:

    OUT/{train,validation,test}/TrackNNNNN/{metadata.yaml, all_src.mid, MIDI/SNN.mid, stems/SNN.flac, mix.flac}

`--midi DIR` renders the user's own multi-track MIDI files (e.g. Lakh MIDI, as Slakh did) the same way.
Everything is deterministic for a given seed; songs are rendered in parallel processes.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from collections import Counter

import numpy as np
import pretty_midi
import soundfile as sf
import yaml
from tqdm import tqdm

from cli.common import USER_ERROR
from notes.soundfont import SOUNDFONT, render_part
from songs.compose import Part, compose
from audio.instruments import INSTRUMENTS, SLAKH_LABELS, program_class

MARKER = "synth.yaml"  # written at the dataset root; marks a folder this script may replace with overwrite=True
DEFAULT_TRACKS = 80
DEFAULT_SECONDS = 40.0
DEFAULT_SAMPLE_RATE = 32000


class SynthError(ValueError):
    """A user-facing problem making a dataset (output folder exists, no SoundFont, no MIDI files, ...)."""


# ---------------------------------------------------------------------------------------- rendering

def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.dot(x, x) / x.size)) if x.size else 0.0


def _sum(xs: list[np.ndarray]) -> np.ndarray:
    out = np.zeros_like(xs[0], dtype=np.float32)
    for x in xs:
        out += x
    return out


def _midi_instrument(part: Part) -> pretty_midi.Instrument:
    inst = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum, name=part.inst_class)
    inst.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=max(e, s + 1e-3)) for s, e, p, v in part.notes]
    return inst


def _gm_name(part: Part) -> str:
    return "Drums" if part.is_drum else pretty_midi.program_to_instrument_name(part.program)


def write_track(track_dir: str, parts: list[Part], stems: list[np.ndarray], sample_rate: int, soundfont: str,
                midi: pretty_midi.PrettyMIDI, extra: dict | None = None) -> None:
    """Write one song in the Slakh layout: stems, their sum as mix, MIDI parts and metadata.yaml."""
    os.makedirs(os.path.join(track_dir, "stems"))
    os.makedirs(os.path.join(track_dir, "MIDI"))
    mix = _sum(stems)
    peak = max([float(np.abs(mix).max())] + [float(np.abs(s).max()) for s in stems])
    scale = 0.9 / peak if peak > 0.9 else 1.0  # one factor for all, so the mix stays the sum of the stems
    stems = [(s * scale).astype(np.float32) for s in stems]
    mix = _sum(stems)
    meta_stems = {}
    for k, (part, x) in enumerate(zip(parts, stems)):
        name = f"S{k:02d}"
        sf.write(os.path.join(track_dir, "stems", name + ".flac"), x, sample_rate)
        one = copy.copy(midi)  # shares the song's tempo map, metre and key; holds only this part
        one.instruments = [midi.instruments[part.source] if part.source >= 0 else _midi_instrument(part)]
        one.write(os.path.join(track_dir, "MIDI", name + ".mid"))
        meta_stems[name] = {
            "audio_rendered": True, "is_drum": part.is_drum,
            "inst_class": SLAKH_LABELS[program_class(part.program, part.is_drum)],  # Slakh's label, case and all
            "midi_program_name": _gm_name(part), "midi_saved": True,
            "plugin_name": os.path.basename(soundfont), "program_num": 128 if part.is_drum else part.program,
        }
    sf.write(os.path.join(track_dir, "mix.flac"), mix, sample_rate)
    meta = {"UUID": hashlib.md5(track_dir.encode()).hexdigest(), "audio_dir": "stems", "midi_dir": "MIDI",
            "normalized": False, "overall_gain": float(scale), "sample_rate": sample_rate, "stems": meta_stems}
    if extra:
        meta.update(extra)
    with open(os.path.join(track_dir, "metadata.yaml"), "w") as f:
        yaml.safe_dump(meta, f, sort_keys=True)


def render_song(job: tuple) -> tuple[str, int]:
    """Compose, render and write song `index` of a dataset (runs in a worker process)."""
    index, track_dir, seconds, seed, sample_rate, soundfont, one_program = job
    rng = np.random.default_rng([seed, index])
    held_out = os.path.basename(os.path.dirname(track_dir)) != "train"
    plan, parts = compose(rng, seconds, one_program, held_out)
    n = int(round(seconds * sample_rate))
    stems = []
    for part in parts:
        x = render_part(part.notes, part.program, part.is_drum, n, sample_rate, soundfont)
        r = _rms(x)
        stems.append(x * (10 ** ((-20.0 + part.gain_db) / 20) / r) if r > 0 else x)  # stem level: -28..-20 dBFS RMS
    all_src = pretty_midi.PrettyMIDI(initial_tempo=plan.tempo)
    all_src.time_signature_changes = [pretty_midi.TimeSignature(plan.beats, 4, 0.0)]
    all_src.key_signature_changes = [pretty_midi.KeySignature(plan.key_number, 0.0)]
    all_src.instruments = [_midi_instrument(p) for p in parts]
    song = {"tempo": plan.tempo, "key": pretty_midi.key_number_to_key_name(plan.key_number),
            "time_signature": f"{plan.beats}/4", "form": "".join(plan.form),
            "progressions": {k: [int(d) for d in v[:4]] for k, v in sorted(plan.chords.items())},
            "seed": int(seed), "index": int(index)}
    write_track(track_dir, parts, stems, sample_rate, soundfont, midi=all_src, extra={"synth": song})
    all_src.write(os.path.join(track_dir, "all_src.mid"))
    return track_dir, len(parts)


# ------------------------------------------------------------------------------------- dataset I/O


def split_sizes(n: int) -> tuple[int, int, int]:
    """80/10/10 train/validation/test, with at least one validation and one test track once n >= 3."""
    if n < 3:
        return n, 0, 0
    k = max(1, int(round(0.1 * n)))
    return n - 2 * k, k, k


def _prepare_out(out_dir: str, overwrite: bool) -> str:
    """Check the output folder and return a fresh temporary folder beside it (renamed into place at the end)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        if not overwrite:
            raise SynthError(f"output folder {out_dir} exists and is not empty; choose another --out or pass "
                             "--overwrite (only a folder this script made is replaced)")
        if not os.path.isfile(os.path.join(out_dir, MARKER)):
            raise SynthError(f"refusing to replace {out_dir}: it has no {MARKER}, so it was not made by python -m songs.synth")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".partial-", dir=parent)


def _finish_out(tmp: str, out_dir: str, info: dict) -> None:
    """Write the marker and move the finished dataset into place (replacing an old one of ours)."""
    with open(os.path.join(tmp, MARKER), "w") as f:
        yaml.safe_dump(info, f, sort_keys=True)
    out_dir = os.path.abspath(out_dir)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    if os.path.exists(out_dir):
        old = tmp + ".old"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out_dir)


def _run_jobs(fn, jobs: list, workers: int | None, progress: bool, desc: str) -> list:
    workers = min(workers or os.cpu_count() or 1, len(jobs)) if jobs else 1
    bar = tqdm(total=len(jobs), desc=desc, unit="song", disable=not progress)
    results = []
    try:
        if workers <= 1:
            for j in jobs:
                results.append(fn(j))
                bar.update()
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers) as pool:
                for r in pool.imap_unordered(fn, jobs):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    return results


def add_render_options(p, what: str) -> None:
    """The command-line options songs.synth and songs.corpus share: seed, SoundFont, rate, processes, overwrite and
    one program per class (`what` names the dataset the command makes)."""
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    p.add_argument("--soundfont", default=None, help="GM SoundFont (.sf2) to render with (default: pretty_midi's "
                                                     "TimGM6mb.sf2)")
    p.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE,
                   help=f"audio rate in Hz (default {DEFAULT_SAMPLE_RATE})")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: all CPU cores)")
    p.add_argument("--overwrite", action="store_true", help=f"replace an existing {what} made by this script")
    p.add_argument("--one-program-per-class", action="store_true",
                   help="every instrument class plays one GM program (the demo's setting; default: 5-8 programs "
                        "each)")


def _check_soundfont(soundfont: str | None) -> str:
    soundfont = soundfont or SOUNDFONT
    if not os.path.isfile(soundfont):
        raise SynthError(f"SoundFont not found: {soundfont} (pass --soundfont PATH to a GM .sf2 file)")
    try:
        import tinysoundfont  # noqa: F401
    except ImportError:
        raise SynthError("tinysoundfont is not installed: pip install --no-deps tinysoundfont==0.3.7") from None
    return soundfont


def dataset_info(tracks: int, seconds: float, seed: int, sample_rate: int, soundfont: str | None,
                 one_program: bool) -> dict:
    """What synth.yaml records of a composed dataset (train.py compares it with the demo's settings)."""
    return {"tracks": int(tracks), "seconds": float(seconds), "seed": int(seed), "sample_rate": int(sample_rate),
            "soundfont": os.path.basename(soundfont or SOUNDFONT), "one_program_per_class": bool(one_program)}


def read_info(out_dir: str) -> dict | None:
    """The settings a dataset made by make_dataset was made with (its synth.yaml), or None."""
    path = os.path.join(out_dir, MARKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return yaml.safe_load(f)


def make_dataset(out_dir: str, tracks: int = DEFAULT_TRACKS, seconds: float = DEFAULT_SECONDS, seed: int = 0,
                 soundfont: str | None = None, workers: int | None = None, progress: bool = True,
                 sample_rate: int = DEFAULT_SAMPLE_RATE, overwrite: bool = False, one_program: bool = False) -> str:
    """Compose and render `tracks` songs of `seconds` each into a Slakh-layout dataset with 80/10/10 splits.

    Keys are drawn from all twelve tonics (major and minor); `one_program` gives every class one GM program.

    Deterministic for a seed (song i depends only on (seed, i)). The dataset is built in a temporary folder
    and renamed into place, so an interrupted run leaves no half dataset at out_dir. Returns out_dir.
    """
    if tracks < 1 or seconds <= 0:
        raise SynthError("--tracks must be at least 1 and --seconds positive")
    soundfont = _check_soundfont(soundfont)
    tmp = _prepare_out(out_dir, overwrite)
    try:
        n_train, n_val, _ = split_sizes(tracks)
        jobs = []
        for i in range(tracks):
            split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
            jobs.append((i, os.path.join(tmp, split, f"Track{i + 1:05d}"), float(seconds), int(seed), int(sample_rate), soundfont,
                         bool(one_program)))
        _run_jobs(render_song, jobs, workers, progress, "synth")
        _finish_out(tmp, out_dir, dataset_info(tracks, seconds, seed, sample_rate, soundfont, one_program))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ------------------------------------------------------------------------------------ user's MIDI


def midi_parts(pm: pretty_midi.PrettyMIDI, seconds: float) -> list[tuple[Part, list]]:
    """One Part per instrument track that has notes before `seconds`, with its controller events."""
    out = []
    for k, inst in enumerate(pm.instruments):
        notes = [(n.start, min(n.end, seconds), n.pitch, n.velocity) for n in inst.notes if n.start < seconds and n.end > n.start]
        if not notes:
            continue
        controls = [(c.time, "cc", c.number, c.value) for c in inst.control_changes
                    if c.number in (1, 7, 10, 11, 64) and c.time < seconds]
        controls += [(b.time, "bend", b.pitch + 8192, 0) for b in inst.pitch_bends if b.time < seconds]
        part = Part(INSTRUMENTS[program_class(inst.program, inst.is_drum)], int(inst.program), bool(inst.is_drum), "midi", notes, source=k)
        out.append((part, controls))
    return out


def render_midi_file(job: tuple) -> tuple[str, str | None]:
    """Render one multi-track MIDI file into a Slakh track; returns (path, reason skipped or None)."""
    path, track_dir, max_seconds, sample_rate, soundfont = job
    try:
        pm = pretty_midi.PrettyMIDI(path)
        end = pm.get_end_time()
    except Exception:
        return path, "broken MIDI file"
    seconds = min(end + 1.0, max_seconds) if max_seconds else end + 1.0  # 1 s for the last release
    parts = midi_parts(pm, seconds)
    if not parts:
        return path, "MIDI file without notes"
    n = int(round(seconds * sample_rate))
    stems = [render_part(p.notes, p.program, p.is_drum, n, sample_rate, soundfont, controls) for p, controls in parts]
    write_track(track_dir, [p for p, _ in parts], stems, sample_rate, soundfont, midi=pm,
                extra={"source_midi": os.path.basename(path)})
    shutil.copyfile(path, os.path.join(track_dir, "all_src.mid"))
    return path, None


def render_midi_dir(midi_dir: str, out_dir: str, seconds: float | None = None, soundfont: str | None = None,
                    workers: int | None = None, progress: bool = True, sample_rate: int = DEFAULT_SAMPLE_RATE,
                    overwrite: bool = False) -> tuple[str, Counter]:
    """Render every .mid/.midi file under midi_dir (one song each, one stem per instrument track) into the
    Slakh layout with 80/10/10 splits; empty or broken files are skipped and counted. Returns (out_dir, skips)."""
    if not os.path.isdir(midi_dir):
        raise SynthError(f"MIDI folder not found: {midi_dir}")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(midi_dir) for f in fs
                   if f.lower().endswith((".mid", ".midi")))
    if not files:
        raise SynthError(f"no .mid or .midi files under {midi_dir}")
    soundfont = _check_soundfont(soundfont)
    tmp = _prepare_out(out_dir, overwrite)
    try:
        n_train, n_val, _ = split_sizes(len(files))
        jobs = []
        for i, f in enumerate(files):
            split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
            jobs.append((f, os.path.join(tmp, split, f"Track{i + 1:05d}"), seconds, int(sample_rate), soundfont))
        results = _run_jobs(render_midi_file, jobs, workers, progress, "render")
        skips = Counter(reason for _, reason in results if reason)
        if len(skips) and sum(skips.values()) == len(files):
            raise SynthError(f"no MIDI file under {midi_dir} could be rendered ({dict(skips)})")
        _finish_out(tmp, out_dir, {"midi_dir": os.path.abspath(midi_dir), "files": len(files), "skipped": dict(skips),
                                   "sample_rate": int(sample_rate), "soundfont": os.path.basename(soundfont)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, skips


# ---- the command ----

def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m songs.synth",
        description="Make a Slakh-layout stem dataset: compose songs as MIDI parts and render them with a General "
                    "MIDI SoundFont, or (--midi) render your own multi-track MIDI files.")
    p.add_argument("--out", required=True, help="output dataset folder (must not exist or be empty)")
    p.add_argument("--tracks", type=int, default=DEFAULT_TRACKS, help=f"songs to compose (default {DEFAULT_TRACKS})")
    p.add_argument("--seconds", type=float, default=None,
                   help=f"song length in seconds (default {DEFAULT_SECONDS:g}; with --midi: whole files)")
    p.add_argument("--midi", default=None, help="render the .mid files under this folder instead of composing")
    add_render_options(p, "dataset")
    args = p.parse_args(argv)
    try:
        if args.midi:
            out, skips = render_midi_dir(args.midi, args.out, args.seconds, args.soundfont, args.workers,
                                         sample_rate=args.sample_rate, overwrite=args.overwrite)
            print(f"wrote {out}" + (f"; skipped {dict(skips)}" if skips else ""))
        else:
            out = make_dataset(args.out, args.tracks, args.seconds or DEFAULT_SECONDS, args.seed, args.soundfont,
                               args.workers, sample_rate=args.sample_rate, overwrite=args.overwrite,
                               one_program=args.one_program_per_class)
            print(f"wrote {out}")
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR)


if __name__ == "__main__":
    main()
