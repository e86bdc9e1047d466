"""The built-in demo's data (train.py's default): composed songs and real works, made on first use in one folder
of datasets, and, after the run, a held-out context for the user to try.

A folder made with other settings is refused rather than used silently.
"""
from __future__ import annotations

import os
import sys

from data import PairDraw, StemPairDataset
from metrics import listening
from audio.files import write_audio
from audio.instruments import INSTRUMENTS, instrument_id
from songs.corpus import CorpusError, render_corpus
from songs.synth import DEFAULT_SAMPLE_RATE, SynthError, dataset_info, make_dataset, read_info

DEMO_DATA = os.path.join("data", "demo")  # composed/ (DEMO_SONGS) and corpus/ (DEMO_WORKS), made on first use


def demo_data(data_dir: str, seed: int, progress: bool) -> str:
    """The demo's folder of datasets: composed songs in composed/ (demo_dataset), real works in corpus/
    (demo_corpus)."""
    demo_dataset(os.path.join(data_dir, "composed"), seed, progress=progress)
    demo_corpus(os.path.join(data_dir, "corpus"), seed, progress=progress)
    return data_dir


DEMO_SONGS = dict(tracks=320, seconds=10.0, one_program=True)  # the built-in demo's songs (train.py, README)


def demo_dataset(out_dir: str, seed: int = 0, progress: bool = True) -> str:
    """The demo's songs (DEMO_SONGS: many short songs in all twelve keys, one program per class) at out_dir:
    rendered on first use; a folder made with other settings is refused rather than used silently."""
    if not os.path.isdir(out_dir):
        print(f"rendering the built-in synthetic dataset into {out_dir} ({DEMO_SONGS['tracks']} songs of "
              f"{DEMO_SONGS['seconds']:g} s)", file=sys.stderr)
        return make_dataset(out_dir, seed=seed, progress=progress, **DEMO_SONGS)
    made = read_info(out_dir)
    if made != dataset_info(seed=seed, sample_rate=DEFAULT_SAMPLE_RATE, soundfont=None, **DEMO_SONGS):
        raise SynthError(f"{out_dir} was made with other settings ({made}); delete it to render the demo's "
                         "songs again, or pass --data")
    return out_dir


# The built-in demo's real works (train.py renders them beside DEMO_SONGS): folders whose scores music21
# parses in well under a second, one 10 s chunk of each work in one random key.
DEMO_WORKS = dict(folders=["palestrina", "monteverdi", "josquin"], max_works=160, transpositions="1", seconds=10.0,
                  chunks=1, one_program=True)


def demo_corpus(out_dir: str, seed: int = 0, progress: bool = True) -> str:
    """The demo's real works (DEMO_WORKS) at out_dir: rendered on first use; a folder made with other settings
    is refused rather than used silently."""
    made = read_info(out_dir) if os.path.isdir(out_dir) else None
    want = {k: DEMO_WORKS[k] for k in ("transpositions", "seconds", "chunks")} | {"seed": int(seed)}
    if made is None and not os.path.isdir(out_dir):
        print(f"rendering {DEMO_WORKS['max_works']} real works from music21's corpus into {out_dir}", file=sys.stderr)
        return render_corpus(out_dir, seed=seed, progress=progress, **DEMO_WORKS)[0]
    if made is None or {k: made.get(k) for k in want} != want or made.get("files") != DEMO_WORKS["max_works"]:
        raise CorpusError(f"{out_dir} was made with other settings ({made}); delete it to render the demo's works "
                          "again, or pass --data")
    return out_dir


def demo_context(data_dir: str, out_path: str, sample_rate: int, seed: int = 0) -> tuple[str, str]:
    """Write a held-out (test split) context-mix to try, and return it with the class of its missing stem.

    The first of 64 seeded test pairs whose missing stem is a piano (the class the README's examples use)
    sharing the context's key (the real stem's time-averaged chroma correlates with the context's by at least
    0.5): a context whose harmony a new piano part can be heard to follow. No model plays a part in the choice.
    """
    ds = StemPairDataset(data_dir, "test", PairDraw(sample_rate, crop_seconds=10.0), seed=seed, length=64,
                         verbose=False)

    def harmonic(item):
        context, target, inst = item[0].numpy(), item[1].numpy(), item[2]
        key = listening.chroma_agreement(listening.chroma(target, sample_rate), listening.chroma(context, sample_rate))[1]
        return inst == instrument_id("piano") and key >= 0.5

    context, _, inst = next((item for item in (ds[i] for i in range(len(ds))) if harmonic(item)), ds[0])
    context = context.numpy()
    context *= min(1.0, 0.9 / max(float(abs(context).max()), 1e-9))   # a sum of stems may exceed full scale
    write_audio(out_path, context, sample_rate, overwrite=True)
    return out_path, INSTRUMENTS[inst]
