"""MIR descriptor analysers for the MIRDD metric (Sec. 3.1).

The paper computes, for every audio of a population, eleven descriptors: key signature, length of note pitch
range, number of unique pitch classes, maximum vertical density of percussive notes (0.6 s windows), beats per
bar, chord label variety, chord tonality alteration ratio, note pitches, note pitch classes, chord triad labels
and structure labels. MIRDD is then the KL divergence between the two populations' distributions of each
descriptor, averaged (`mirdd`, at the end of this file).

Where we differ from the paper. The paper used learned models for every analyser: audio transcription [24],
beat and downbeat tracking [25], key and chord estimation [26] and structure extraction [27]. Only our notes
come from a learned model; the other analysers are librosa signal processing, cruder than the paper's, so
our MIRDD values are NOT comparable with the published ones:
- notes (note pitches, note pitch classes, pitch range, unique pitch classes): basic-pitch's ICASSP 2022
  model, run offline (notes/transcriber.py). It names the 88 piano keys, MIDI 21-108. Whether it is the model the
  paper cites as [24] we do not claim.
- percussive notes: onsets of the HPSS percussive part in three frequency bands (low / mid / high, standing in
  for kick / snare / cymbals); simultaneous hits in different bands count separately, which is our
  "vertical" density. No drum transcription.
- beats: librosa's dynamic-programming beat tracker. There is no downbeat tracker in librosa, so beats per
  bar is the period (2, 3 or 4) whose beat-synchronous accent pattern (loudness plus harmonic change)
  has the largest contrast between one phase and the others (accents: loudness in dB and chroma change at
  each beat).
- key: chroma averaged over the clip, correlated with the Krumhansl-Kessler profiles (24 keys).
- chords: chroma templates for the 24 major / minor triads plus "N" (no chord), smoothed with a Viterbi
  pass (sticky transitions), as in the librosa chord-recognition example.
- structure: beat-synchronous chroma + MFCC, contiguous agglomerative segmentation into about one segment per
  8 s, segments sharing a label when their mean features are close; labels A, B, C... in order of first
  appearance. The paper's structure model gives functional labels (verse, chorus); ours are only letters.

Histograms and smoothing. Each descriptor's histogram runs over exactly the values its analyser can produce
(`DESCRIPTORS`), no wider: note pitches over the transcriber's MIDI 21-108, pitch range over 0-87, and so on.
KL needs every bin the reference population fills to be non-zero in the generated one, so `kl_divergence`
adds one pseudo-count to every bin of that support in both histograms (add-one smoothing, `alpha`) before
normalising. A bin no clip can reach would take the same pseudo-count and only pull both distributions toward
uniform, shrinking every score; this is why the supports are exact.
"""
from __future__ import annotations

import warnings

import librosa
import numpy as np
from tqdm import tqdm

from notes.transcriber import NOTE_HIGH, NOTE_LOW, SAMPLE_RATE, transcribe_batch

ANALYSIS_SR = SAMPLE_RATE  # every analyser works at this rate: the transcriber's, 22050 Hz (librosa's default too)
HOP = 512  # analysis hop of the librosa analysers, about 23 ms at ANALYSIS_SR

PITCH_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
KEYS = [f"{p} major" for p in PITCH_NAMES] + [f"{p} minor" for p in PITCH_NAMES] + ["N"]  # N: no key (silence)
CHORDS = [f"{p}:maj" for p in PITCH_NAMES] + [f"{p}:min" for p in PITCH_NAMES] + ["N"]
STRUCTURE_LABELS = [chr(ord("A") + i) for i in range(8)]
METRES = (2, 3, 4)  # the beats-per-bar periods beats_per_bar chooses from (0: too few beats to tell)

# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

# Percussive onsets (percussive_onsets) and their density (max_density).
PERCUSSIVE_BAND_EDGES_HZ = (200, 4000)  # three bands: low / mid / high
PERCUSSIVE_BANDS = len(PERCUSSIVE_BAND_EDGES_HZ) + 1
PERCUSSIVE_WAIT = 4  # frames after an onset in which its band takes no other onset
DENSITY_WINDOW = 0.6  # seconds (Sec. 3.1)
# At most one onset every PERCUSSIVE_WAIT + 1 frames in each band, so a window holds at most this many.
MAX_PERCUSSIVE_DENSITY = PERCUSSIVE_BANDS * int(np.ceil(DENSITY_WINDOW * ANALYSIS_SR / HOP / (PERCUSSIVE_WAIT + 1)))

RATIO_BINS = 10  # chord_alteration_ratio, a share in [0, 1], is counted in ten equal bins

# The eleven descriptors of Sec. 3.1 and the support each one's histogram is taken over, exactly the values
# its analyser can produce: ("values", every possible value) or ("bins", n equal bins of [0, 1]).
DESCRIPTORS = {
    "key": ("values", tuple(KEYS)),
    "pitch_range": ("values", tuple(range(NOTE_HIGH - NOTE_LOW + 1))),  # semitones, 0 when no note
    "unique_pitch_classes": ("values", tuple(range(13))),
    "percussive_density": ("values", tuple(range(MAX_PERCUSSIVE_DENSITY + 1))),
    "beats_per_bar": ("values", (0,) + METRES),
    "chord_variety": ("values", tuple(range(len(CHORDS)))),  # distinct chords other than N: 0..24
    "chord_alteration_ratio": ("bins", RATIO_BINS),
    "note_pitches": ("values", tuple(range(NOTE_LOW, NOTE_HIGH + 1))),
    "note_pitch_classes": ("values", tuple(range(12))),
    "chord_labels": ("values", tuple(CHORDS)),
    "structure_labels": ("values", tuple(STRUCTURE_LABELS)),
}

# The CQT behind every chroma spans MIDI 24-132 (Nyquist permitting), as when the key and chord analysers were
# measured; chroma folds only its seven octaves 24-107 (a CQT that stops at 107 moves chroma values by up to 0.08).
SPECTRUM_LOW, SPECTRUM_HIGH = 24, 132


def _frames_to_seconds(n: int) -> float:
    return n * HOP / ANALYSIS_SR


def note_descriptors(notes: np.ndarray) -> dict[str, list]:
    """The four descriptors computed from transcribed notes [N, 3]."""
    pitches = notes[:, 2].astype(int)
    return {"pitch_range": [int(pitches.max() - pitches.min()) if pitches.size else 0],
            "unique_pitch_classes": [int(np.unique(pitches % 12).size)],
            "note_pitches": pitches.tolist(),
            "note_pitch_classes": (pitches % 12).tolist()}


# ---------------------------------------------------------------------------------------------------------
# Key, chords, beats, metre, percussion, structure: librosa

def _semitone_spectrum(y: np.ndarray) -> np.ndarray:
    """CQT magnitude at three bins per semitone from SPECTRUM_LOW up, max-pooled to one bin per semitone:
    [n semitones, T], row 0 is MIDI SPECTRUM_LOW."""
    top = min(SPECTRUM_HIGH, int(librosa.hz_to_midi(ANALYSIS_SR / 2 * 0.95)))
    fmin = librosa.midi_to_hz(SPECTRUM_LOW) * 2 ** (-1 / 36)  # first of three bins centred on SPECTRUM_LOW
    n_semitones = top - SPECTRUM_LOW + 1
    C = np.abs(librosa.cqt(y, sr=ANALYSIS_SR, hop_length=HOP, fmin=fmin, n_bins=3 * n_semitones,
                           bins_per_octave=36))
    return C.reshape(n_semitones, 3, -1).max(axis=1)


def cqt_chroma(y: np.ndarray, spectrum: np.ndarray | None = None) -> np.ndarray:
    """CQT chroma [12, T] (C first, max-normalised per frame), folded from the semitone spectrum of MIDI 24-107
    (seven octaves, as librosa's chroma_cqt); shared by the key, chord, meter and structure analysers."""
    M = _semitone_spectrum(y) if spectrum is None else spectrum
    chroma = M[24 - SPECTRUM_LOW:108 - SPECTRUM_LOW].reshape(7, 12, -1).sum(axis=0)
    return chroma / (chroma.max(axis=0, keepdims=True) + 1e-12)


def estimate_key(y: np.ndarray, chroma: np.ndarray | None = None) -> str:
    """Key signature: mean chroma correlated with the rotated Krumhansl-Kessler profiles (24 keys)."""
    chroma = cqt_chroma(y) if chroma is None else chroma
    rms = librosa.feature.rms(y=y, hop_length=HOP)[0][: chroma.shape[1]]
    profile = (chroma[:, : rms.size] * rms).sum(axis=1)  # loudness-weighted mean chroma
    if rms.max() < 1e-4 or np.ptp(profile) <= 1e-9 * profile.max(initial=0.0) + 1e-12:
        return "N"
    scores = [np.corrcoef(profile, np.roll(ref, k))[0, 1] for ref in (KK_MAJOR, KK_MINOR) for k in range(12)]
    return KEYS[int(np.nanargmax(scores))]


def _chord_templates() -> np.ndarray:
    """Binary triad templates, unit norm: [24, 12] (12 major then 12 minor)."""
    T = np.zeros((24, 12))
    for r in range(12):
        T[r, [r, (r + 4) % 12, (r + 7) % 12]] = 1
        T[12 + r, [r, (r + 3) % 12, (r + 7) % 12]] = 1
    return T / np.linalg.norm(T, axis=1, keepdims=True)


def estimate_chords(y: np.ndarray, min_seconds: float = 0.2, chroma: np.ndarray | None = None
                    ) -> list[tuple[float, float, str]]:
    """Chord segments (start s, end s, label in CHORDS): triad templates on chroma, Viterbi-smoothed."""
    chroma = cqt_chroma(y) if chroma is None else chroma  # [12, T]
    rms = librosa.feature.rms(y=y, hop_length=HOP)[0]
    T = min(chroma.shape[1], rms.size)
    chroma, rms = chroma[:, :T], rms[:T]
    unit = chroma / (np.linalg.norm(chroma, axis=0, keepdims=True) + 1e-9)
    sim = _chord_templates() @ unit  # [24, T] cosine similarity
    silent = rms < max(rms.max(), 1e-9) * 10 ** (-40 / 20) + 1e-6
    no_chord = np.where(silent, 1.0, 0.5)  # "N" competes with weak matches and wins on silence
    logits = np.vstack([sim, no_chord[None]]) * 20.0
    prob = np.exp(logits - logits.max(axis=0))
    prob /= prob.sum(axis=0)
    path = librosa.sequence.viterbi_discriminative(prob, librosa.sequence.transition_loop(len(CHORDS), 0.95))
    segments = []
    bounds = np.flatnonzero(np.diff(path)) + 1
    for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [T]])):
        if _frames_to_seconds(b - a) >= min_seconds or not segments:
            segments.append([_frames_to_seconds(a), _frames_to_seconds(b), CHORDS[path[a]]])
        else:
            segments[-1][1] = _frames_to_seconds(b)  # absorb blips into the previous chord
    merged = []
    for s in segments:  # absorbing can leave neighbours with one label
        if merged and merged[-1][2] == s[2]:
            merged[-1][1] = s[1]
        else:
            merged.append(s)
    return [tuple(s) for s in merged]


def estimate_beats(y: np.ndarray) -> tuple[float, np.ndarray]:
    """Tempo (BPM) and beat times (s) from librosa's beat tracker (stand-in for [25])."""
    tempo, beats = librosa.beat.beat_track(y=y, sr=ANALYSIS_SR, hop_length=HOP, units="frames")
    return float(np.atleast_1d(tempo)[0]), librosa.frames_to_time(beats, sr=ANALYSIS_SR, hop_length=HOP)


def beats_per_bar(y: np.ndarray, beat_times: np.ndarray, chroma: np.ndarray | None = None) -> int:
    """Meter in {2, 3, 4}: the period whose beat-synchronous accents best single out one phase; 0 if unknown."""
    if len(beat_times) < 8:
        return 0
    beats = librosa.time_to_frames(beat_times, sr=ANALYSIS_SR, hop_length=HOP)
    loud = librosa.amplitude_to_db(librosa.feature.rms(y=y, hop_length=HOP)[0], ref=1.0, top_db=None)
    accent = np.array([loud[max(b - 1, 0): b + 4].max() if b < loud.size else loud.min() for b in beats])
    chroma = cqt_chroma(y) if chroma is None else chroma
    sync = librosa.util.sync(chroma, beats, aggregate=np.mean)[:, 1: len(beats) + 1]  # chroma from each beat
    change = np.concatenate([[0.0], np.linalg.norm(np.diff(sync, axis=1), axis=0)])[: len(beats)]
    z = lambda v: (v - v.mean()) / (v.std() + 1e-9)
    a = z(accent) + z(change[: accent.size]) if change.size == accent.size else z(accent)
    best, best_score = 0, 0.0
    for m in METRES:
        if len(a) < 2 * m:
            continue
        score = max(a[p::m].mean() - np.delete(a, np.s_[p::m]).mean() for p in range(m))
        if score > best_score + 1e-6:
            best, best_score = m, score
    return best


def percussive_onsets(y: np.ndarray) -> np.ndarray:
    """Onset times (s) of percussive notes: HPSS percussive part, one onset stream per low / mid / high band."""
    perc = librosa.effects.percussive(y, margin=2.0)
    S = librosa.feature.melspectrogram(y=perc, sr=ANALYSIS_SR, hop_length=HOP, n_mels=64, fmax=ANALYSIS_SR / 2)
    mel_hz = librosa.mel_frequencies(n_mels=64, fmax=ANALYSIS_SR / 2)
    edges = [0] + [int(np.searchsorted(mel_hz, hz)) for hz in PERCUSSIVE_BAND_EDGES_HZ] + [64]
    env = librosa.onset.onset_strength_multi(S=librosa.power_to_db(S), channels=edges, sr=ANALYSIS_SR,
                                             hop_length=HOP)  # [PERCUSSIVE_BANDS, T]
    top = env.max() + 1e-9
    times = []
    for e in env:
        peaks = librosa.util.peak_pick(e, pre_max=3, post_max=3, pre_avg=5, post_avg=5, delta=0.15 * top,
                                       wait=PERCUSSIVE_WAIT)
        peaks = peaks[e[peaks] > 0.25 * top]
        times.append(librosa.frames_to_time(peaks, sr=ANALYSIS_SR, hop_length=HOP))
    return np.sort(np.concatenate(times))


def max_density(times: np.ndarray, window: float = DENSITY_WINDOW) -> int:
    """Largest number of events inside any window of `window` seconds."""
    if times.size == 0:
        return 0
    t = np.sort(times)
    return int((np.searchsorted(t, t + window, side="left") - np.arange(t.size)).max())


def segment_structure(y: np.ndarray, beat_times: np.ndarray, seconds_per_segment: float = 8.0,
                      chroma: np.ndarray | None = None) -> list[str]:
    """Structure labels (A, B, ... by first appearance) of contiguous segments (stand-in for [27])."""
    duration = y.size / ANALYSIS_SR
    k = max(1, int(round(duration / seconds_per_segment)))
    beats = librosa.time_to_frames(beat_times, sr=ANALYSIS_SR, hop_length=HOP)
    chroma = cqt_chroma(y) if chroma is None else chroma
    mfcc = librosa.feature.mfcc(y=y, sr=ANALYSIS_SR, hop_length=HOP, n_mfcc=13)[:, : chroma.shape[1]]
    feats = np.vstack([chroma, mfcc / (np.abs(mfcc).max() + 1e-9)])
    if len(beats) >= 2 * k:
        feats = librosa.util.sync(feats, beats, aggregate=np.mean)
    k = min(k, feats.shape[1])
    if k <= 1:
        return ["A"]
    feats = (feats - feats.mean(axis=1, keepdims=True)) / (feats.std(axis=1, keepdims=True) + 1e-9)
    bounds = list(librosa.segment.agglomerative(feats, k)) + [feats.shape[1]]
    means = [feats[:, a:b].mean(axis=1) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    labels, centres = [], []  # centres[i] is the mean feature of label STRUCTURE_LABELS[i]
    for m in means:
        d = [np.linalg.norm(m - c) / np.sqrt(m.size) for c in centres]
        if d and min(d) < 0.5:
            labels.append(STRUCTURE_LABELS[int(np.argmin(d))])
        elif len(centres) < len(STRUCTURE_LABELS):
            centres.append(m)
            labels.append(STRUCTURE_LABELS[len(centres) - 1])
        else:
            labels.append(STRUCTURE_LABELS[-1])
    return labels


def alteration_ratio(chords: list[str]) -> float:
    """Chord tonality alteration ratio: share of chord changes that switch between major and minor."""
    seq = [c for c in chords if c != "N"]
    changes = [(a, b) for a, b in zip(seq[:-1], seq[1:]) if a != b]
    if not changes:
        return 0.0
    return sum(a.split(":")[1] != b.split(":")[1] for a, b in changes) / len(changes)


def at_analysis_rate(y: np.ndarray, sr: int) -> np.ndarray:
    """Mono audio resampled to ANALYSIS_SR (soxr, through librosa), float32; refuses clips under 0.5 s."""
    y = np.asarray(y, dtype=np.float32)
    if sr != ANALYSIS_SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=ANALYSIS_SR)
    if y.size < ANALYSIS_SR // 2:
        raise ValueError(f"audio too short for MIR analysis ({y.size / ANALYSIS_SR:.2f} s; need at least 0.5 s)")
    return y


def signal_descriptors(y: np.ndarray) -> dict[str, list]:
    """The seven descriptors of the librosa analysers (key, chords, beats, metre, percussion, structure) of one
    clip at ANALYSIS_SR."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about n_fft on short or silent inputs
        _, beat_times = estimate_beats(y)
        chroma = cqt_chroma(y)
        chords = [c for _, _, c in estimate_chords(y, chroma=chroma)]
        return {
            "key": [estimate_key(y, chroma)],
            "percussive_density": [max_density(percussive_onsets(y), DENSITY_WINDOW)],
            "beats_per_bar": [beats_per_bar(y, beat_times, chroma)],
            "chord_variety": [len(set(c for c in chords if c != "N"))],
            "chord_alteration_ratio": [alteration_ratio(chords)],
            "chord_labels": chords,
            "structure_labels": segment_structure(y, beat_times, chroma=chroma),
        }


def describe(y: np.ndarray, sr: int) -> dict[str, list]:
    """All eleven descriptors of Sec. 3.1 for one audio: {name: list of values} (scalars as one-item lists)."""
    return describe_population([y], sr)[0]


def describe_population(wavs: list[np.ndarray], sample_rate: int, progress: bool = False, desc: str = "mir",
                        batch: int = 8) -> list[dict]:
    """describe() for every clip. The transcriber takes `batch` clips at a time; the progress bar counts clips,
    each one once all its analysers (its share of the batch's transcription included) are done."""
    out = []
    with tqdm(total=len(wavs), desc=desc, unit="clip", disable=not progress, leave=False) as bar:
        for start in range(0, len(wavs), batch):
            clips = [at_analysis_rate(w, sample_rate) for w in wavs[start:start + batch]]
            for y, notes in zip(clips, transcribe_batch(clips)):
                found = {**note_descriptors(notes), **signal_descriptors(y)}
                out.append({name: found[name] for name in DESCRIPTORS})          # in DESCRIPTORS' order
                bar.update(1)
    return out


def histogram(values: list, name: str) -> np.ndarray:
    """Counts of one descriptor's values over its support (DESCRIPTORS[name]); a value outside the support
    is a bug in an analyser and raises ValueError."""
    kind, support = DESCRIPTORS[name]
    if kind == "bins":
        v = np.asarray(values, dtype=np.float64)
        if np.any((v < 0) | (v > 1)) or np.any(~np.isfinite(v)):
            raise ValueError(f"{name}: values outside [0, 1]: {v[(v < 0) | (v > 1) | ~np.isfinite(v)].tolist()}")
        return np.bincount(np.minimum((v * support).astype(int), support - 1), minlength=support).astype(np.float64)
    index = {value: i for i, value in enumerate(support)}
    unknown = [v for v in values if v not in index]
    if unknown:
        raise ValueError(f"{name}: values outside its support {support[0]!r}..{support[-1]!r}: {unknown[:5]}")
    return np.bincount(np.asarray([index[v] for v in values], dtype=int), minlength=len(support)).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------
# MIRDD (Sec. 3.1)

def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray, alpha: float = 1.0) -> float:
    """KL(P || Q) of two histograms over one descriptor's support, with add-alpha smoothing.

    Both histograms get `alpha` pseudo-counts in every one of the support's K bins, p_k = (P_k + alpha) /
    (sum P + K alpha) and likewise q, and the result is sum_k p_k log(p_k / q_k): finite for alpha > 0 even
    when the two populations share no value. MIRDD uses alpha = 1 (evaluate.py --kl-smoothing).
    """
    p = np.asarray(p_counts, dtype=np.float64) + alpha
    q = np.asarray(q_counts, dtype=np.float64) + alpha
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("histograms must share one support and not be empty (use alpha > 0 for empty ones)")
    p, q = p / p.sum(), q / q.sum()
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def population_histograms(descriptors: list[dict]) -> dict[str, np.ndarray]:
    """Per descriptor, the counts of all clips' values pooled over the descriptor's support."""
    return {name: sum((histogram(d[name], name) for d in descriptors), histogram([], name))
            for name in DESCRIPTORS}


def mirdd(reference: list[dict], generated: list[dict], alpha: float = 1.0) -> tuple[float, dict[str, float]]:
    """MIRDD: per descriptor KL(reference || generated) of the population distributions, then the mean."""
    ref, gen = population_histograms(reference), population_histograms(generated)
    per = {name: kl_divergence(ref[name], gen[name], alpha) for name in DESCRIPTORS}
    return float(np.mean(list(per.values()))), per


def song_histograms(descriptors: list[dict], song_index: np.ndarray, n_songs: int) -> dict[str, np.ndarray]:
    """Per descriptor, the counts of each song's clips' values [n_songs, K] (population_histograms per song)."""
    out = {}
    for name in DESCRIPTORS:
        per_clip = [histogram(d[name], name) for d in descriptors]
        h = np.zeros((n_songs, len(per_clip[0])))
        np.add.at(h, np.asarray(song_index), np.stack(per_clip))
        out[name] = h
    return out


def bootstrap_mirdd(reference: dict[str, np.ndarray], generated: dict[str, np.ndarray], draws: np.ndarray,
                    alpha: float = 1.0) -> np.ndarray:
    """MIRDD of each resample of songs: draws [B, n_songs] says how often each song is taken (both populations
    take the same songs); reference and generated are song_histograms."""
    draws = np.asarray(draws, dtype=np.float64)
    per = []
    for name in DESCRIPTORS:
        p, q = draws @ reference[name] + alpha, draws @ generated[name] + alpha            # [B, K]
        p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
        per.append(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0), axis=1))
    return np.mean(per, axis=0)
