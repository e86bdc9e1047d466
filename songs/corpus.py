"""Real compositions in the Slakh layout: music21's corpus rendered part by part with a General MIDI SoundFont.

Slakh2100 is Lakh MIDI rendered with sample-based instruments; this does the same for the multi-part works that
ship, offline, inside the music21 wheel (Palestrina's masses, Monteverdi's madrigals, the trecento, string
quartets by Haydn, Mozart and Beethoven, Corelli, ...). Each part of a work becomes one stem. Its instrument is
drawn as Slakh's renders were: a class, then one of several GM programs of that class (compose.CLASS_PARTS),
the lowest part most often a bass. A work can be rendered in several transpositions (each a new track), and
in 20-60 s chunks.

Splits are by work: every movement, section, chunk, transposition and rendering of one work goes to the split
that a hash of the work's name picks, so nothing heard in training comes back in validation or test.

Reserved: music21's `bach/` folder is held back for our own final evaluation and is never rendered here.

Tracks record where they came from in metadata.yaml: `corpus: {piece, source, transpose, chunk}`, `transpose`
in semitones 0-11 (what `musicality.transposition_test` reads). The music21 corpus is distributed with music21
(BSD licence; the works themselves are public domain editions: see music21's corpus/license.txt).

    python -m songs.corpus --out data/corpus                       # every usable work, two transpositions each
    python -m songs.corpus --out data/transposed --split test --transpositions all --max-works 8
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pretty_midi

from cli.common import USER_ERROR
from songs.compose import CLASS_PARTS, Part
from audio.instruments import INSTRUMENTS, program_class
from songs.synth import (DEFAULT_SAMPLE_RATE, SynthError, _check_soundfont, _finish_out, _prepare_out, _rms, _run_jobs,
                         add_render_options,
                         midi_parts, render_part, write_track)

RESERVED = ("bach",)       # music21 corpus folders never rendered: held out for our own evaluation
# Folders of single-line tunes (and teaching material): parsing them yields no multi-part work, only time
# (ryansMammoth alone is 1,059 files); they are read only when asked for by name.
TUNE_FOLDERS = ("airdsAirs", "demos", "essenFolksong", "miscFolk", "nottingham-dataset", "oneills1850",
                "ryansMammoth", "theoryExercises")
EXTENSIONS = (".krn", ".mxl", ".xml", ".musicxml", ".abc")
SPLIT_SHARES = (0.8, 0.1)  # train, validation; the rest test (by a hash of the work's name)
MIN_PARTS = 2              # a work needs a context and a target
STEM_DB = -20.0            # stem level before the per-part gain, dBFS RMS (as synth.render_song)
BASS_SHARE = 0.7           # how often the lowest part is rendered as a bass (else any pitched class)
# Classes a part of a real work is drawn from: every pitched class of Slakh's table (drums, effects and
# unpitched percussion have no part to play in a four-voice mass).
PART_CLASSES = [c for c in CLASS_PARTS if c not in ("Synth Effects", "Percussive")]


class CorpusError(SynthError):
    """A user-facing problem (music21 missing, a reserved folder asked for, nothing renderable)."""


def corpus_root() -> str:
    """The corpus folder inside the installed music21 wheel."""
    try:
        import music21
    except ImportError:
        raise CorpusError("music21 is not installed: pip install music21==10.5.1") from None
    return os.path.join(os.path.dirname(music21.__file__), "corpus")


def list_works(root: str, folders: list[str] | None = None) -> list[str]:
    """Corpus files (paths relative to root) that may hold a multi-part work; reserved folders never appear."""
    asked = set(folders or [])
    bad = asked & set(RESERVED)
    if bad:
        raise CorpusError(f"{sorted(bad)} is reserved for held-out evaluation and is never rendered")
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        top = rel.split(os.sep)[0]
        if rel == ".":
            dirs[:] = [x for x in dirs if x not in RESERVED]  # never even listed
            continue  # the corpus's own modules
        skip = top not in asked if asked else top in TUNE_FOLDERS
        if top in RESERVED or skip or "__pycache__" in rel or top.startswith("_"):
            dirs[:] = []
            continue
        out += [os.path.join(rel, f) for f in files if f.lower().endswith(EXTENSIONS)]
    return sorted(out)


def work_name(root: str, rel: str) -> str:
    """The work a file belongs to, which decides its split: a Humdrum file's parent work (`!!!OPR`, e.g. the mass
    of a Palestrina Agnus), else the folder of a multi-movement work (haydn/opus1no1), else the file itself."""
    parts = rel.split(os.sep)
    if rel.endswith(".krn"):
        with open(os.path.join(root, rel), errors="replace") as f:
            for line in f:
                if line.startswith("!!!OPR:"):
                    return f"{parts[0]}/{line[7:].strip()}"
                if not line.startswith("!"):
                    break
    if len(parts) > 2:
        return "/".join(parts[:-1])
    return os.path.splitext(rel)[0]


def work_split(work: str) -> str:
    """train / validation / test for a work, from a hash of its name (stable across runs and machines)."""
    h = int(hashlib.sha1(work.encode()).hexdigest()[:8], 16) / 16 ** 8
    return "train" if h < SPLIT_SHARES[0] else "validation" if h < sum(SPLIT_SHARES) else "test"


def to_midi(path: str) -> pretty_midi.PrettyMIDI | None:
    """Parse a corpus file with music21 and convert it to MIDI (its tempo marks kept); None for a collection of
    tunes (an Opus) or a file music21 cannot read."""
    from music21 import converter, midi, stream
    try:
        score = converter.parse(path)
        if isinstance(score, stream.Opus):
            return None
        mf = midi.translate.streamToMidiFile(score)
        return pretty_midi.PrettyMIDI(io.BytesIO(mf.writestr()))
    except Exception:
        return None


@dataclass
class Rendering:
    """How one track is made from a work: its transposition, the chunk of time and each part's program."""
    transpose: int         # semitones, -6..5 (recorded as 0-11)
    start: float           # seconds into the work
    seconds: float
    programs: list[int]    # one GM program per part, lowest part first


def pick_programs(n_parts: int, rng: np.random.Generator, one_program: bool = False) -> list[int]:
    """GM programs for the parts of a work, lowest first: a bass most often for the lowest part, then distinct
    pitched classes, each with one of its several programs (Slakh's timbre variety), or with `one_program` the
    first of them (the class fixes the timbre, as compose.choose_band does)."""
    classes = list(rng.permutation(PART_CLASSES))
    if rng.random() < BASS_SHARE:
        classes.remove("Bass")
        classes.insert(0, "Bass")
    else:
        classes.remove("Bass")  # a bass above the lowest part would be out of register
    out = []
    for k in range(n_parts):
        cls = classes[k % len(classes)]
        drawn = int(rng.choice(CLASS_PARTS[cls][1]))  # drawn either way: the same works apart from their programs
        out.append(CLASS_PARTS[cls][1][0] if one_program else drawn)
    return out


def pitched_parts(pm: pretty_midi.PrettyMIDI) -> list[pretty_midi.Instrument]:
    """The work's parts that have notes, lowest (by median pitch) first; drum tracks are left out."""
    parts = [i for i in pm.instruments if i.notes and not i.is_drum]
    return sorted(parts, key=lambda i: float(np.median([n.pitch for n in i.notes])))


def part_notes(inst: pretty_midi.Instrument, r: Rendering, bass: bool) -> list[tuple]:
    """(start_s, end_s, pitch, velocity) of one part inside a rendering's chunk, transposed; a part played by a
    bass goes down an octave when it sits above the bass register, as a bass player would play a low voice."""
    shift = r.transpose - (12 if bass and np.median([n.pitch for n in inst.notes]) >= 52 else 0)
    out = []
    for n in inst.notes:
        s, e = n.start - r.start, min(n.end - r.start, r.seconds)
        if e > 0 and s < r.seconds:
            if 21 <= n.pitch + shift <= 108:  # a note moved off the piano's range is dropped, not clipped
                out.append((max(s, 0.0), e, int(n.pitch + shift), int(n.velocity)))
    return out


def render_track(pm: pretty_midi.PrettyMIDI, work: str, rel: str, r: Rendering, track_dir: str, sample_rate: int,
                 soundfont: str, rng: np.random.Generator) -> bool:
    """Render one rendering of a parsed work into a Slakh track; False (nothing written) when fewer than two of
    its parts sound in the chunk."""
    n = int(round(r.seconds * sample_rate))
    parts, stems = [], []
    for k, inst in enumerate(pitched_parts(pm)):
        prog = r.programs[k % len(r.programs)]
        notes = part_notes(inst, r, bass=program_class(prog, False) == INSTRUMENTS.index("Bass"))
        if not notes:
            continue
        x = render_part(notes, prog, False, n, sample_rate, soundfont)
        level = _rms(x)
        if level == 0:
            continue
        stems.append(x * (10 ** ((STEM_DB + rng.uniform(-6, 0)) / 20) / level))
        parts.append(Part(INSTRUMENTS[program_class(prog, False)], prog, False, "voice", notes, source=-1))
    if len(parts) < MIN_PARTS:
        return False
    tempo = pm.get_tempo_changes()[1]
    song = pretty_midi.PrettyMIDI(initial_tempo=float(tempo[0]) if len(tempo) else 120.0)
    write_track(track_dir, parts, stems, sample_rate, soundfont, midi=song,
                extra={"corpus": {"piece": work, "source": rel, "transpose": int(r.transpose % 12),
                                  "start_seconds": float(r.start)}})
    return True


def plan_renderings(length: float, rng: np.random.Generator, n_parts: int, transpositions: str, seconds: float,
                    chunks: int, one_program: bool = False) -> list[Rendering]:
    """The tracks one work gives: `chunks` chunks of `seconds` (evenly spread over the work), each in
    `transpositions` random keys (or "all" twelve, with one set of programs so that only the pitch changes)."""
    starts = [0.0] if length <= seconds else list(np.linspace(0.0, length - seconds, chunks))
    out = []
    for start in starts:
        if transpositions == "all":
            programs = pick_programs(n_parts, rng, one_program)
            out += [Rendering(k - 12 if k >= 6 else k, float(start), seconds, programs) for k in range(12)]
        else:
            for k in rng.choice(12, size=int(transpositions), replace=False):
                out.append(Rendering(int(k) - 12 if k >= 6 else int(k), float(start), seconds,
                                     pick_programs(n_parts, rng, one_program)))
    return out


def track_name(rel: str, j: int) -> str:
    """The folder name of a corpus file's j-th track: unique to the file, so that datasets rendered apart can sit
    side by side in one folder of datasets (data.py) without two tracks sharing a name."""
    return f"Corpus-{hashlib.sha1(rel.encode()).hexdigest()[:10]}-{j:02d}"


def render_work(job: tuple) -> tuple[str, Counter]:
    """Parse one corpus file and render every track it gives (runs in a worker process); returns (file, counts)."""
    root, rel, split, out_tmp, index, transpositions, seconds, chunks, sample_rate, soundfont, seed, one_program = job
    pm = to_midi(os.path.join(root, rel))
    if pm is None:
        return rel, Counter({"not one multi-part score music21 reads": 1})
    n_parts = len(pitched_parts(pm))
    if n_parts < MIN_PARTS:
        return rel, Counter({"fewer than two parts": 1})
    rng = np.random.default_rng([seed, index])
    work, counts = work_name(root, rel), Counter()
    for j, r in enumerate(plan_renderings(pm.get_end_time(), rng, n_parts, transpositions, seconds, chunks,
                                                 one_program)):
        ok = render_track(pm, work, rel, r, os.path.join(out_tmp, split, track_name(rel, j)), sample_rate, soundfont,
                          rng)
        counts["tracks" if ok else "chunks with fewer than two sounding parts"] += 1
    return rel, counts


def render_corpus(out_dir: str, folders: list[str] | None = None, split: str = "all", max_works: int | None = None,
                  transpositions: str = "2", seconds: float = 30.0, chunks: int = 2, seed: int = 0,
                  sample_rate: int = DEFAULT_SAMPLE_RATE, soundfont: str | None = None, workers: int | None = None,
                  progress: bool = True, overwrite: bool = False, one_program: bool = False) -> tuple[str, Counter]:
    """Render the corpus's multi-part works into a Slakh-layout folder, split by work (`one_program`: every class
    plays one GM program). Returns (out_dir, counts)."""
    if transpositions != "all" and not (transpositions.isdigit() and 1 <= int(transpositions) <= 12):
        raise CorpusError(f"--transpositions must be 1-12 or 'all', got {transpositions!r}")
    if seconds <= 0 or chunks < 1:
        raise CorpusError(f"need --seconds above 0 and --chunks of at least 1 (got {seconds:g} and {chunks})")
    root = corpus_root()
    soundfont = _check_soundfont(soundfont)
    files = [f for f in list_works(root, folders) if split == "all" or work_split(work_name(root, f)) == split]
    rng = np.random.default_rng(seed)
    if max_works is not None:
        files = sorted(rng.permutation(files)[:max_works].tolist())
    if not files:
        raise CorpusError(f"no corpus files in {folders or 'any folder'} for split {split}")
    tmp = _prepare_out(out_dir, overwrite)
    try:
        jobs = [(root, f, work_split(work_name(root, f)), tmp, i, transpositions, seconds, chunks, sample_rate,
                 soundfont, seed, one_program) for i, f in enumerate(files)]
        counts = sum((c for _, c in _run_jobs(render_work, jobs, workers, progress, "corpus")), Counter())
        if not counts["tracks"]:
            raise CorpusError(f"nothing could be rendered ({dict(counts)})")
        _finish_out(tmp, out_dir, {"corpus": "music21", "files": len(files), "split": split, "seed": int(seed),
                                   "transpositions": transpositions, "seconds": float(seconds), "chunks": int(chunks),
                                   "sample_rate": int(sample_rate), "soundfont": os.path.basename(soundfont),
                                   "one_program_per_class": bool(one_program), "counts": dict(counts)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, counts


def render_midi_transpositions(midi_path: str, out_dir: str, seconds: float = 20.0, start: float = 0.0,
                               sample_rate: int = DEFAULT_SAMPLE_RATE, soundfont: str | None = None,
                               overwrite: bool = False) -> str:
    """A transposition test set from one multi-track MIDI file (e.g. a Lakh MIDI song, as Slakh's are): the chunk
    [start, start + seconds) in all twelve keys, each part with its own GM program, drums left as they are."""
    soundfont = _check_soundfont(soundfont)
    try:
        pm = pretty_midi.PrettyMIDI(midi_path)
    except Exception:
        raise CorpusError(f"cannot read MIDI file {midi_path}") from None
    for inst in pm.instruments:  # the chunk starts at 0
        inst.notes = [pretty_midi.Note(n.velocity, n.pitch, n.start - start, n.end - start) for n in inst.notes
                      if n.end > start]
        inst.control_changes, inst.pitch_bends = [], []
    parts = [(p, c) for p, c in midi_parts(pm, seconds) if p.notes]
    if sum(not p.is_drum for p, _ in parts) < MIN_PARTS:
        raise CorpusError(f"{midi_path}: fewer than two pitched parts sound in the chunk")
    tmp = _prepare_out(out_dir, overwrite)
    try:
        n = int(round(seconds * sample_rate))
        name = os.path.splitext(os.path.basename(midi_path))[0]
        if name == "all_src":  # Slakh's name for a track's whole MIDI file: the track's folder names the song
            name = os.path.basename(os.path.dirname(os.path.abspath(midi_path)))
        tempi = pm.get_tempo_changes()[1]
        tempo = float(tempi[0]) if len(tempi) else 120.0
        for k in range(12):
            shift = k - 12 if k >= 6 else k
            moved = [Part(p.inst_class, p.program, p.is_drum, p.role, p.notes if p.is_drum else
                          [(a, b, q + shift, v) for a, b, q, v in p.notes if 0 <= q + shift <= 127], source=-1)
                     for p, _ in parts]
            stems = [render_part(p.notes, p.program, p.is_drum, n, sample_rate, soundfont) for p in moved]
            write_track(os.path.join(tmp, "test", f"{name}-t{k:02d}"), moved, stems, sample_rate, soundfont,
                        midi=pretty_midi.PrettyMIDI(initial_tempo=tempo),
                        extra={"corpus": {"piece": name, "source": os.path.basename(midi_path), "transpose": k,
                                          "start_seconds": float(start)}})
        _finish_out(tmp, out_dir, {"midi": os.path.basename(midi_path), "transpositions": "all",
                                   "seconds": float(seconds), "start_seconds": float(start),
                                   "sample_rate": int(sample_rate), "soundfont": os.path.basename(soundfont)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---- the command ----

def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m songs.corpus",
        description="Render real multi-part works from music21's corpus (offline, in its wheel) into a Slakh-layout "
                    "stem dataset, one stem per part, split by work. music21's bach/ folder is reserved for "
                    "held-out evaluation and never rendered.")
    p.add_argument("--out", required=True, help="output dataset folder (must not exist or be empty)")
    p.add_argument("--folders", nargs="*", default=None,
                   help="corpus folders to take works from, e.g. palestrina haydn (default: every folder but the "
                        "reserved bach/ and the single-line tune collections)")
    p.add_argument("--split", default="all", choices=["all", "train", "validation", "test"],
                   help="render only the works of one split (by the work's hash; default all three)")
    p.add_argument("--max-works", type=int, default=None, help="at most this many corpus files, drawn with --seed")
    p.add_argument("--transpositions", default="2",
                   help="keys per chunk: a number 1-12 of random transpositions, or 'all' twelve with the same "
                        "instruments (a transposition test set)")
    p.add_argument("--midi", default=None, metavar="FILE",
                   help="instead of the corpus: one multi-track MIDI file rendered in all twelve keys with its own "
                        "programs (a transposition test set, e.g. from a Lakh MIDI song); --start chooses the chunk")
    p.add_argument("--start", type=float, default=0.0, help="with --midi: where the chunk starts, in seconds")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each rendered chunk (default 30)")
    p.add_argument("--chunks", type=int, default=2, help="chunks per work, spread over its length (default 2)")
    add_render_options(p, "dataset")
    args = p.parse_args(argv)
    if args.midi:
        ignored = [f for f, v in (("--folders", args.folders), ("--split", args.split != "all"),
                                  ("--max-works", args.max_works is not None), ("--transpositions", args.transpositions != "2"),
                                  ("--chunks", args.chunks != 2), ("--one-program-per-class", args.one_program_per_class))
                   if v]
        if ignored:
            p.error(f"--midi renders one file in all twelve keys with its own programs: {', '.join(ignored)} "
                    "do not apply to it")
    try:
        if args.midi:
            out = render_midi_transpositions(args.midi, args.out, args.seconds, args.start, args.sample_rate,
                                             args.soundfont, args.overwrite)
            print(f"wrote {out}: twelve transpositions of {args.midi}")
            return
        out, counts = render_corpus(args.out, args.folders, args.split, args.max_works, args.transpositions,
                                    args.seconds, args.chunks, args.seed, args.sample_rate, args.soundfont,
                                    args.workers, overwrite=args.overwrite, one_program=args.one_program_per_class)
        print(f"wrote {out}: {dict(counts)}")
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR)


if __name__ == "__main__":
    main()
