"""The pictures `evaluate.py --listening --plot` draws: what a person would rather look at than read.

- `plot_examples`: constant-Q spectrograms (`log_cqt`) of a context, the generated stem and the real stem side
  by side, one row per example.
- `plot_transposition`: the transposition test (musicality.py) as a picture, each part's chroma in every key
  rolled back into the written key (`musicality.back_in_key`): straight columns for a part that follows the
  key, diagonals for one that does not.
- `plot_harmony`: the context's chords over time (its pitch classes, beat by beat) with the strongest pitch class
  of the real and the generated part on top: a part that follows the chords moves where the context's colours move.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from metrics import harmony
from metrics.musicality import back_in_key


def log_cqt(wave: np.ndarray, sample_rate: int, hop: int = 512) -> np.ndarray:
    """|CQT| of a mono wave, semitone bins from C1 up to at most C8 below 0.9 Nyquist [n_bins, frames]."""
    import librosa
    fmin = float(librosa.note_to_hz("C1"))
    n_bins = int(min(84, np.floor(12 * np.log2(0.45 * sample_rate / fmin))))
    return np.abs(librosa.cqt(np.asarray(wave, dtype=np.float32), sr=sample_rate, hop_length=hop, fmin=fmin,
                              n_bins=n_bins))


def plot_examples(path: str, rows: list[dict], sample_rate: int) -> str:
    """A PNG with one row per example: CQT spectrograms (dB) of its context, generated and real stem; returns path.

    Each row: {"context", "generated", "real"} mono waves at sample_rate, and optionally "label" (a title).
    """
    if not rows:
        raise ValueError("plot_examples needs at least one example (a dict of context, generated and real waves)")
    columns = ("context", "generated", "real")
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"plot_examples: example {i} has no {', '.join(missing)} wave")
    import librosa
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 2.6 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        mags = [log_cqt(row[c], sample_rate) for c in columns]
        ref = max(float(m.max()) for m in mags) or 1.0        # one reference per row: the three are comparable
        for j, (column, mag) in enumerate(zip(columns, mags)):
            ax = axes[i, j]
            ax.imshow(librosa.amplitude_to_db(mag, ref=ref, top_db=80.0), origin="lower", aspect="auto",
                      cmap="magma", vmin=-80, vmax=0, extent=(0.0, len(row[column]) / sample_rate, 0, mag.shape[0]))
            ax.set_title(f"{row.get('label', f'example {i}')}: {column}" if j == 0 else column, fontsize=9)
            ax.set_xlabel("seconds")
            ax.set_ylabel("semitones above C1" if j == 0 else "")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def plot_transposition(path: str, rows: list[dict], whos: tuple[str, ...] = ("context", "real", "generated"),
                       chunks: int = 3) -> str:
    """A PNG of the transposition test: for each of the first `chunks` chunks heard in the most keys (by name,
    so the same chunks for every model), one panel per part in `whos`: its chroma in each key, rolled back into
    the written key (back_in_key). Columns that run straight down: the part follows the key; diagonals: it
    ignores it. Each panel's title gives its mean transposition score over that chunk. Returns path."""
    keys = Counter(r.get("chunk") for r in rows if r.get("chunk") is not None)
    if not keys:
        raise ValueError("plot_transposition needs transposition_test's examples (with their chunks)")
    chosen = sorted(keys, key=lambda c: (-keys[c], c))[:chunks]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(chosen), len(whos), figsize=(2.9 * len(whos), 2.9 * len(chosen)), squeeze=False)
    for i, chunk in enumerate(chosen):
        for j, who in enumerate(whos):
            transposes, grid = back_in_key(rows, who, chunk)
            ax = axes[i, j]
            ax.imshow(grid, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
                      extent=(-0.5, 11.5, -0.5, len(transposes) - 0.5))
            ax.set_xticks(range(12), PITCH_CLASSES, fontsize=6)
            ax.set_yticks(range(len(transposes)), [str(t) for t in transposes], fontsize=6)
            scores = [r[who] for r in rows if r.get("chunk") == chunk and who in r]
            title = who if not scores else f"{who}: score {np.mean(scores):.2f}"
            piece = next(r["piece"] for r in rows if r.get("chunk") == chunk)
            ax.set_title(f"{piece}\n{title}" if j == 0 else title, fontsize=8)
            ax.set_xlabel("pitch class, written key", fontsize=7)
            ax.set_ylabel("transposed by (semitones)" if j == 0 else "", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_harmony(path: str, items: list[dict], sample_rate: int) -> str:
    """A PNG with one panel per item: the context's beat-long chroma frames (harmony.frame_chroma, each frame
    scaled to its peak) as colours, and on top each part's strongest pitch class per sounding frame, with its fit
    (harmony.fit) in the legend. Each item: {"label", "context": wave, "parts": {name: wave}}. Returns path."""
    if not items:
        raise ValueError("plot_harmony needs at least one item (a context and its parts)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(items), 1, figsize=(12, 2.8 * len(items)), squeeze=False)
    markers = {"real": ("o", "#2ca02c"), "generated": ("x", "#1f77b4")}
    for ax, item in zip(axes[:, 0], items):
        ctx = harmony.frame_chroma(item["context"], sample_rate)
        shown = ctx / np.maximum(ctx.max(axis=0, keepdims=True), 1e-12)
        step = harmony.FRAME_SECONDS
        ax.imshow(shown, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1,
                  extent=(0, shown.shape[1] * step, -0.5, 11.5))
        for k, (name, wave) in enumerate(item["parts"].items()):
            part = harmony.frame_chroma(wave, sample_rate)
            sounding = np.flatnonzero(part.sum(axis=0) > 0)
            fit = harmony.fit(wave, item["context"], sample_rate)
            marker, colour = markers.get(name, ("s", f"C{k + 2}"))
            text = ", ".join(f"{m} {'-' if fit[m] is None else f'{fit[m]:+.2f}'}" for m in ("key", "chords"))
            ax.scatter((sounding + 0.5) * step, part.argmax(axis=0)[sounding] + 0.12 * (k - 0.5), marker=marker,
                       color=colour, s=28, label=f"{name} ({text})")
        ax.set_yticks(range(12), PITCH_CLASSES, fontsize=7)
        ax.set_xlabel("seconds")
        ax.set_title(f"{item.get('label', '')}: the context's pitch classes (grey) and each part's strongest one",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
