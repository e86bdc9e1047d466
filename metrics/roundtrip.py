"""A codec's round-trip quality on held-out audio: spectral convergence and chroma similarity (`bench.py codec`).

    python bench.py codec --codec FILE|encodec_32khz --data DIR      # one row per held-out file, and the means

Each file of the test split (loose files as they are) is read for `seconds` from its start, encoded, decoded
and compared with what went in. The metrics use torch.stft and librosa's chroma filters, not the spectral
codec's own STFT, so that a metric shares no code with a codec it measures.
"""
from __future__ import annotations

import os
import time

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from audio.files import audio_info, load_mono
from codec import Codec
from data import CROP_SECONDS
from audio.slakh import find_tracks

METRICS = ("spectral_convergence", "chroma_cosine", "chroma_correlation")


def magnitude_frames(x: np.ndarray, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT| [F, T] of a mono buffer [S]: Hann window, a frame centred on every multiple of hop (zero padding)."""
    wav = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.stft(wav, n_fft, hop, window=torch.hann_window(n_fft), center=True, pad_mode="constant",
                      return_complex=True).abs()


def spectral_convergence(ref: np.ndarray, est: np.ndarray, n_fft: int = 2048, hop: int = 512) -> float:
    """|| |STFT(ref)| - |STFT(est)| ||_F / || |STFT(ref)| ||_F (0 is perfect)."""
    a, b = magnitude_frames(ref, n_fft, hop), magnitude_frames(est, n_fft, hop)
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def chroma_similarity(ref: np.ndarray, est: np.ndarray, sample_rate: int, n_fft: int = 4096,
                      hop: int = 1024) -> tuple[float, float]:
    """Frame-wise chroma agreement over the frames where `ref` sounds: (mean cosine, mean Pearson correlation)."""
    fb = torch.from_numpy(librosa.filters.chroma(sr=sample_rate, n_fft=n_fft)).float()  # [12, F]
    a, b = (fb @ magnitude_frames(s, n_fft, hop).pow(2) for s in (ref, est))  # [12, T]
    energy = a.sum(0)
    active = energy > 1e-4 * energy.max()
    if not bool(active.any()):
        raise ValueError("the reference is silent: chroma similarity is undefined")
    a, b = a[:, active], b[:, active]
    cosine = F.cosine_similarity(a, b, dim=0, eps=1e-12)
    corr = F.cosine_similarity(a - a.mean(0), b - b.mean(0), dim=0, eps=1e-12)
    return float(cosine.mean()), float(corr.mean())


def measure(codec: Codec, data_dir: str, seconds: float = CROP_SECONDS, max_files: int | None = None, seed: int = 0,
            progress: bool = True) -> list[dict]:
    """Round-trip every held-out file (the test split; loose files as they are): one row of metrics per file."""
    files = [p for track in find_tracks(data_dir, ("test",)) for p in track]
    rng = np.random.default_rng(seed)
    if max_files is not None and len(files) > max_files:
        files = sorted(rng.choice(files, max_files, replace=False))
    rows = []
    for p in tqdm(files, desc="round trips", disable=not progress):
        sr, n, _ = audio_info(p)
        want = int(seconds * sr)
        x = load_mono(p, codec.sample_rate, 0, min(n, want))
        if np.abs(x).max() < 1e-4:
            continue  # silent stems tell nothing about the codec
        t0 = time.perf_counter()
        y = codec.decode_audio(codec.encode_audio(x, codec.sample_rate), len(x))
        seconds_taken = time.perf_counter() - t0
        cos, corr = chroma_similarity(x, y, codec.sample_rate)
        rows.append({"file": os.path.relpath(p, data_dir), "seconds": len(x) / codec.sample_rate,
                     "spectral_convergence": spectral_convergence(x, y), "chroma_cosine": cos,
                     "chroma_correlation": corr, "round_trip_s": seconds_taken})
    if not rows:
        raise ValueError(f"no non-silent audio to measure under {data_dir}")
    return rows


def table(rows: list[dict]) -> str:
    """measure's rows as a table: one line per file, then the means of the metrics."""
    lines = [f"{'file':40s} {'SC':>6s} {'chroma cos':>10s} {'chroma corr':>11s} {'time s':>7s}"]
    for r in rows:
        lines.append(f"{r['file'][-40:]:40s} {r['spectral_convergence']:6.3f} {r['chroma_cosine']:10.3f} "
                     f"{r['chroma_correlation']:11.3f} {r['round_trip_s']:7.2f}")
    mean = means(rows)
    lines.append(f"{'mean of ' + str(len(rows)) + ' files':40s} {mean['spectral_convergence']:6.3f} "
                 f"{mean['chroma_cosine']:10.3f} {mean['chroma_correlation']:11.3f}")
    return "\n".join(lines)


def means(rows: list[dict]) -> dict[str, float]:
    """The mean of each metric over measure's rows."""
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
