"""Does a part follow its context's harmony: its key, its chords in time, and does it move? (ours)

Three measures from a part and its context alone, on beat-long frames of pitch-class energy:

- key fit: the part's time-averaged chroma correlated with the context's at the right transposition, minus the
  mean over the eleven wrong ones (transposition_score; evaluate.py's transposition test). 0 for a part that ignores the context.
- chord fit in time: each frame of the part correlated with the *same* frame of the context, minus its mean
  correlation with the context's *other* frames. Exactly 0 for a part that holds one chroma (a drone, however
  well it fits the key), about 0 for one that ignores the context or follows only its key; high for a part that
  changes when the chords change.
- movement: the share of consecutive sounding frames whose strongest pitch class changes (a drone: 0).

The chroma here is plain numpy (each STFT bin's magnitude added to its pitch class, 40-4000 Hz), so that
generate.py can print the fit after every generation without loading librosa. A frame is FRAME_SECONDS long:
a beat at 120 BPM; the chords of the music we test change at most about once a beat, and a fixed frame needs no
tempo tracker, which is unreliable on a few seconds of audio. Frames more than GATE_DB below the clip's loudest
are silence and left out, as listening.chroma gates its frames.
"""
from __future__ import annotations

import numpy as np

FRAME_SECONDS = 0.5
GATE_DB = -60.0
BAND_HZ = (40.0, 4000.0)
MIN_FRAMES = 3       # fewer sounding frames in both: no chord fit (None)
N_SHIFTS = 12
# What real parts score: the real bass of 48 held-out works (music21's corpus, test split, not Bach) in twelve keys,
# 360 contexts of 5 s, 95 % piece-bootstrap intervals key [0.357, 0.563], chords [0.048, 0.121], movement [0.146,
# 0.287]: the "real part" row of evaluate.py --listening --transposition data/transposed-test48 --transposition-split
# test (docs/log.md, 2026-12-07). A part that ignores its context scores 0 on key and chords.
REAL_BASS = {"key": 0.46, "chords": 0.08, "movement": 0.21}
# A fit as words, by its share of the real part's: at least half "follows", a quarter "partly", a tenth "barely".
WORDS = ((0.5, "follows"), (0.25, "partly follows"), (0.1, "barely follows"))


def shift_correlations(stem_chroma_mean: np.ndarray, context_chroma_mean: np.ndarray) -> np.ndarray:
    """[12] Pearson correlations of a stem's 12-bin chroma with its context's rolled by 0..11 semitones
    (0 where either is flat)."""
    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (stem_chroma_mean, context_chroma_mean))
    if a.shape != (N_SHIFTS,) or b.shape != (N_SHIFTS,):
        raise ValueError(f"chroma means must have 12 bins, got {a.shape} and {b.shape}")
    za = a - a.mean()
    out = np.zeros(N_SHIFTS)
    for s in range(N_SHIFTS):
        zb = np.roll(b, s) - b.mean()
        den = np.sqrt((za ** 2).sum() * (zb ** 2).sum())
        out[s] = (za * zb).sum() / den if den > 1e-12 else 0.0
    return out


def transposition_score(stem_chroma_mean: np.ndarray, context_chroma_mean: np.ndarray) -> tuple[float, bool]:
    """(correlation at shift 0 minus the mean over the 11 other shifts, whether shift 0 correlates best).

    The 12 shifted Pearson correlations sum to 0 (the rolled contexts average to a flat chroma), so the score
    is 12/11 of the shift-0 correlation; the wrong shifts add the right-shift-best flag (chance: 1 in 12).
    """
    r = shift_correlations(stem_chroma_mean, context_chroma_mean)
    return float(r[0] - r[1:].mean()), bool(r[0] > r[1:].max())


def frame_chroma(wave: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    """[12, F] pitch-class magnitude of consecutive frames of a mono wave (Hann window; pitch class 0 is C);
    frames below the gate are all 0."""
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    n = max(1, int(round(frame_seconds * sample_rate)))
    frames = x[:len(x) // n * n].reshape(-1, n)                                   # [F, n]
    if len(frames) == 0:
        return np.zeros((12, 0))
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1))                # [F, n // 2 + 1]
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    pitch_class = np.round(12 * np.log2(freqs[band] / 440.0) + 69).astype(int) % 12
    chroma = np.zeros((12, len(frames)))
    np.add.at(chroma, pitch_class, spectrum[:, band].T)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    sounding = rms > max(rms.max() * 10 ** (GATE_DB / 20), 1e-9)
    return chroma * sounding


def _standardised(c: np.ndarray) -> np.ndarray:
    """Each column centred and scaled to unit norm (a flat or silent column stays 0)."""
    z = c - c.mean(axis=0, keepdims=True)
    norm = np.sqrt((z ** 2).sum(axis=0, keepdims=True))
    return np.where(norm > 1e-12, z / np.maximum(norm, 1e-12), 0.0)


def chord_fit(part_chroma: np.ndarray, context_chroma: np.ndarray) -> float | None:
    """Mean over the frames where both sound of corr(part_i, context_i) - mean_{j != i} corr(part_i, context_j);
    None with fewer than MIN_FRAMES such frames."""
    n = min(part_chroma.shape[1], context_chroma.shape[1])
    p, c = part_chroma[:, :n], context_chroma[:, :n]
    both = (p.sum(axis=0) > 0) & (c.sum(axis=0) > 0)
    if both.sum() < MIN_FRAMES:
        return None
    r = _standardised(p[:, both]).T @ _standardised(c[:, both])                     # [F, F] Pearson correlations
    f = r.shape[0]
    others = (r.sum(axis=1) - np.diag(r)) / (f - 1)
    return float((np.diag(r) - others).mean())


def key_fit(part_chroma: np.ndarray, context_chroma: np.ndarray) -> float | None:
    """The transposition score of the time-averaged chromas; None when either is silent."""
    a, b = part_chroma.sum(axis=1), context_chroma.sum(axis=1)
    if a.sum() <= 0 or b.sum() <= 0:
        return None
    return transposition_score(a, b)[0]


def movement(part_chroma: np.ndarray) -> float | None:
    """Share of consecutive sounding frames whose strongest pitch class differs; None with under two."""
    sounding = part_chroma.sum(axis=0) > 0
    top = part_chroma.argmax(axis=0)
    pairs = sounding[1:] & sounding[:-1]
    if not pairs.any():
        return None
    return float((top[1:] != top[:-1])[pairs].mean())


def fit(part: np.ndarray, context: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> dict:
    """{"key", "chords", "movement"} of a part against its context (mono waves at one rate; None: cannot tell)."""
    p, c = frame_chroma(part, sample_rate, frame_seconds), frame_chroma(context, sample_rate, frame_seconds)
    return {"key": key_fit(p, c), "chords": chord_fit(p, c), "movement": movement(p)}


def words(value: float, reference: float) -> str:
    """How a fit reads beside the real part's (WORDS), e.g. "partly follows"."""
    for share, text in WORDS:
        if value >= share * reference:
            return text
    return "does not follow"


def fit_line(name: str, f: dict, reference: dict = REAL_BASS) -> str:
    """One line a musician reads after a generation: the new part's fit with its context, in numbers and words."""
    def reading(what, label):
        v = f[what]
        return "- (too little sound to tell)" if v is None else f"{v:+.2f} ({words(v, reference[what])} the {label})"
    movement = "-" if f["movement"] is None else f"{f['movement']:.2f}"
    return (f"fit of the new {name}: key {reading('key', 'key')}, chords in time {reading('chords', 'chords')}, "
            f"movement {movement}; a part that ignores its context scores 0, real bass parts "
            f"of held-out music about {reference['key']:+.2f}, {reference['chords']:+.2f} and "
            f"{reference['movement']:.2f}")
