"""Fitting the offline spectral codec on a Slakh-layout folder, and the codec a training run uses.

    python -m spectral.fit --data DIR --out FILE         # fit on the train split of a Slakh-layout folder
    python bench.py codec --codec FILE --data DIR       # its round-trip quality on held-out audio

PCA of weighted compressed-magnitude frames, then residual k-means, level by level (spectral/dsp.py has the
signal processing; codec.SpectralCodec is the fitted codec behind the paper's interface).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from audio.files import AudioError, audio_info, load_mono
from audio.slakh import find_tracks
from cli.common import USER_ERROR, DefaultsHelp
from codec import Codec, CodecUnavailable, SpectralCodec, open_codec, load_codec, pad_to_frames, save_spectral
from spectral.dsp import FIT_HINT, WEIGHTINGS, SpectralConfig, bin_weights, compressed_magnitude, nearest


def read_track_crop(files: list[str], sample_rate: int, seconds: float, rng: np.random.Generator
                    ) -> list[np.ndarray]:
    """The same random `seconds` window of every file of one track, mono at `sample_rate` (unreadable: skipped)."""
    infos = []
    for p in files:
        try:
            infos.append((p, audio_info(p)))
        except AudioError as e:
            tqdm.write(f"skipping {e}")
    if not infos:
        return []
    sr = infos[0][1][0]
    frames = min(n for _, (_, n, _) in infos)
    want = int(seconds * sr)
    start = int(rng.integers(0, frames - want + 1)) if frames > want else 0
    out = []
    for p, (file_sr, n, _) in infos:
        try:
            out.append(load_mono(p, sample_rate, start * file_sr // sr, want * file_sr // sr))
        except AudioError as e:
            tqdm.write(f"skipping {e}")
    return out


def training_signals(crops: list[np.ndarray], rng: np.random.Generator, n_mixes: int = 2) -> list[np.ndarray]:
    """Each crop, plus `n_mixes` sums of random subsets of the track's stems (what contexts look like)."""
    crops = [c for c in crops if c.size]
    signals = list(crops)
    if len(crops) >= 2:
        n = min(len(c) for c in crops)
        for _ in range(n_mixes):
            pick = rng.random(len(crops)) < 0.5
            if pick.sum() >= 2:
                signals.append(sum(c[:n] for c, k in zip(crops, pick) if k))
    return signals


def fit_pca(feats: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal directions of [N, F] frames: (mean [F], basis [dim, F] orthonormal, by decreasing variance)."""
    mean = feats.mean(0)
    centred = feats - mean
    cov = centred.T.double() @ centred.double() / max(1, feats.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    basis = vecs[:, -dim:].flip(1).T.float()
    basis = basis * torch.where(basis.sum(1, keepdim=True) < 0, -1.0, 1.0)  # a fixed sign per direction
    return mean, basis


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means, seeded by k-means++ on a subsample; empty clusters re-seeded on the worst-fit points.

    Returns the centres [k, D].
    """
    # k-means++ seeding on a subsample, in numpy: a thousand tiny sequential steps run fastest single-threaded.
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    pool = x[torch.randperm(x.shape[0], generator=generator)[:8 * k]].cpu().double().numpy()
    chosen = [0]
    best = ((pool - pool[0]) ** 2).sum(1)
    for _ in range(1, k):  # next centre drawn in proportion to the squared distance to the nearest one
        i = int(rng.choice(len(pool), p=best / best.sum())) if best.sum() > 0 else int(rng.integers(len(pool)))
        chosen.append(i)
        best = np.minimum(best, ((pool - pool[i]) ** 2).sum(1))
    c = torch.from_numpy(pool[chosen]).to(x)
    for _ in range(iters):
        err, assign = nearest(x, c)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        empty = (counts == 0).nonzero().squeeze(1)
        if len(empty):
            c[empty] = x[err.topk(len(empty)).indices]
    return c


def fit_rvq(z: torch.Tensor, n_q: int, bins: int, iters: int, generator: torch.Generator,
            progress: bool = True) -> torch.Tensor:
    """Residual k-means: level q clusters what levels < q left unexplained. [N, D] -> codebooks [n_q, bins, D]."""
    if z.shape[0] < bins:
        raise ValueError(f"only {z.shape[0]} frames to fit {bins} bins; give more audio or fewer --bins")
    books = []
    residual = z
    for _ in tqdm(range(n_q), desc="residual k-means", disable=not progress):
        book = kmeans(residual, bins, iters, generator)
        books.append(book)
        residual = residual - book[nearest(residual, book)[1]]
    return torch.stack(books)


def signal_frames(data_dir: str, cfg: SpectralConfig, seed: int, desc: str, progress: bool):
    """(loud frames [T1, F], quiet frames [T2, F]) of every fitting signal, in order: a random `seconds_per_track`
    window of every track of the train split (its stems, its mix and random stem sub-mixes). Frames above about
    -60 dB are loud. The same seed gives the same signals, so the frames can be visited twice."""
    rng = np.random.default_rng(seed)
    for files in tqdm(find_tracks(data_dir, ("train",)), desc=desc, disable=not progress):
        for x in training_signals(read_track_crop(files, cfg.sample_rate, cfg.seconds_per_track, rng), rng):
            wav = pad_to_frames(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None], cfg.hop)
            f = compressed_magnitude(wav[:, 0], cfg.n_fft, cfg.hop, cfg.power)[0]  # [T, F]
            loud = f.mean(1) > 1e-3 ** cfg.power
            yield f[loud], f[~loud]


def fitting_frames(data_dir: str, cfg: SpectralConfig, seed: int, generator: torch.Generator,
                   progress: bool = True) -> torch.Tensor:
    """The compressed-magnitude frames [N, F] the codec is fitted on, from the train split of `data_dir`.

    All loud frames of all signals (signal_frames), plus a few quiet ones (one per 50 loud, so that silence has
    a code), and a random `max_frames` of them when there are more. Two passes keep memory at the frames kept:
    the first counts the frames and draws which to keep, the second collects them. (Keeping every frame of the
    demo's songs before drawing peaked at 23 GB.)
    """
    n_loud = n_quiet = 0
    for loud, quiet in signal_frames(data_dir, cfg, seed, "counting frames", progress):
        n_loud, n_quiet = n_loud + len(loud), n_quiet + len(quiet)
    if n_loud < cfg.bins:
        raise ValueError(f"{data_dir}: only {n_loud} non-silent frames found; the codec needs at "
                         f"least {cfg.bins} (more or longer tracks, or fewer --bins)")
    quiet_kept = torch.randperm(n_quiet, generator=generator)[:min(n_quiet, max(1, n_loud // 50))]
    total = n_loud + len(quiet_kept)
    keep = torch.randperm(total, generator=generator)[:cfg.max_frames] if total > cfg.max_frames else torch.arange(total)
    # where each kept frame goes: row r of the result is frame keep[r] of [all loud frames, quiet_kept frames]
    row_of_loud = torch.full((n_loud,), -1, dtype=torch.long)
    row_of_quiet = torch.full((n_quiet,), -1, dtype=torch.long)
    rows = torch.arange(len(keep))
    is_loud = keep < n_loud
    row_of_loud[keep[is_loud]] = rows[is_loud]
    row_of_quiet[quiet_kept[keep[~is_loud] - n_loud]] = rows[~is_loud]
    feats = torch.empty(len(keep), cfg.n_fft // 2 + 1)
    at_loud = at_quiet = 0
    for loud, quiet in signal_frames(data_dir, cfg, seed, "reading tracks", progress):
        for frames, row_of, at in ((loud, row_of_loud, at_loud), (quiet, row_of_quiet, at_quiet)):
            r = row_of[at:at + len(frames)]
            feats[r[r >= 0]] = frames[r >= 0]
        at_loud, at_quiet = at_loud + len(loud), at_quiet + len(quiet)
    return feats


def fit_spectral(data_dir: str, out_path: str | None, config: SpectralConfig | None = None, progress: bool = True,
                 overwrite: bool = False, **settings) -> SpectralCodec:
    """Fit the spectral codec on a Slakh-layout dataset (train split when there are splits) and save it.

    `config` (default SpectralConfig()) with any of its fields overridden by `settings` (e.g. bins=256).
    PCA to `dim` dimensions of the fitting frames, then `n_q` levels of `bins`-way residual k-means.
    Writes `out_path` (if given) atomically.
    """
    cfg = replace(config or SpectralConfig(), **settings)
    if out_path and os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f"output exists: {out_path} (pass --force to overwrite)")
    if cfg.dim > cfg.n_fft // 2 + 1:
        raise ValueError(f"--dim {cfg.dim} exceeds the {cfg.n_fft // 2 + 1} STFT bins")
    generator = torch.Generator().manual_seed(cfg.seed)
    feats = fitting_frames(data_dir, cfg, cfg.seed, generator, progress)
    weight = bin_weights(cfg.weighting, cfg.n_fft, cfg.sample_rate, cfg.floor_hz)
    mean = feats.mean(0)
    basis = fit_pca((feats - mean) * weight, cfg.dim)[1]
    codebooks = fit_rvq(((feats - mean) * weight) @ basis.T, cfg.n_q, cfg.bins, cfg.kmeans_iters, generator, progress)
    codec = SpectralCodec(mean, basis, codebooks, weight, cfg.sample_rate, cfg.frame_rate, cfg.n_fft, cfg.power,
                          cfg.griffin_lim_iters, cfg.seed, source=os.path.abspath(out_path) if out_path else None)
    if out_path:
        save_spectral(codec, out_path, overwrite)
    return codec


def training_codec(recipe, data_dir: str, device, codec_file: str | None = None, weights: str | None = None,
                   progress: bool = True, resume_spec: dict | None = None, may_fit: bool = True) -> Codec:
    """The codec a training run uses (`recipe` is train.Recipe: its codec, codec_bins and seed): the paper's
    Encodec, or the offline spectral codec, fitted on the training data (on the first process) if not there
    yet. A resumed run uses the codec its checkpoint stores (resume_spec)."""
    if resume_spec is not None:
        return load_codec(resume_spec, device=device, weights=weights)
    if recipe.codec != "spectral":
        return open_codec(recipe.codec, weights, device)
    path = codec_file or os.path.join(data_dir, "spectral_codec.pt")
    if not os.path.isfile(path):
        if not may_fit:   # a DDP process other than the first: the first fits it
            hint = FIT_HINT.replace("DATA_DIR", data_dir).replace("FILE", path)
            raise CodecUnavailable(f"fit the spectral codec first: {hint}")
        print(f"fitting the offline spectral codec on {data_dir} -> {path}", file=sys.stderr)
        fit_spectral(data_dir, path, bins=recipe.codec_bins, seed=recipe.seed, progress=progress)
    return open_codec("spectral", path, device)


# ---- the command ----

def build_parser() -> argparse.ArgumentParser:
    """The fitting command, its defaults taken from SpectralConfig."""
    d = SpectralConfig()
    f = argparse.ArgumentParser(prog="python -m spectral.fit", formatter_class=DefaultsHelp,
                                description="Fit the offline spectral codec on a Slakh-layout dataset (its train "
                                            "split when it has one) and write it to a file.")
    f.add_argument("--data", required=True, help="dataset folder (TrackNNNNN/stems/SNN.flac|wav; train/ split "
                   "used when present)")
    f.add_argument("--out", required=True, help="file to write the fitted codec to (.pt)")
    f.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    f.add_argument("--n-q", type=int, default=d.n_q, help="RVQ levels (the paper's Encodec has 4)")
    f.add_argument("--bins", type=int, default=d.bins, help="codewords per level")
    f.add_argument("--dim", type=int, default=d.dim, help="PCA dimensions")
    f.add_argument("--sample-rate", type=int, default=d.sample_rate, help="codec sample rate (Hz)")
    f.add_argument("--n-fft", type=int, default=d.n_fft, help="STFT size")
    f.add_argument("--power", type=float, default=d.power, help="magnitude compression exponent")
    f.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting,
                   help="octave: each octave weighs the same in PCA and k-means, so level 0 keeps pitch; flat: each bin")
    f.add_argument("--floor-hz", type=float, default=d.floor_hz, help="the octave weighting is constant below this")
    f.add_argument("--seconds-per-track", type=float, default=d.seconds_per_track, help="audio read per track")
    f.add_argument("--max-frames", type=int, default=d.max_frames, help="frames kept for fitting")
    f.add_argument("--kmeans-iters", type=int, default=d.kmeans_iters, help="Lloyd iterations per level")
    f.add_argument("--griffin-lim-iters", type=int, default=d.griffin_lim_iters,
                   help="phase-recovery iterations when decoding (64 or 128 change spectral convergence by < 0.01)")
    f.add_argument("--seed", type=int, default=d.seed)
    return f


def run_fit(args) -> None:
    """`python -m spectral.fit`: fit, write the file, say what was written."""
    t0 = time.perf_counter()
    cfg = SpectralConfig(n_q=args.n_q, bins=args.bins, dim=args.dim, sample_rate=args.sample_rate,
                         n_fft=args.n_fft, power=args.power, weighting=args.weighting,
                         floor_hz=args.floor_hz, seconds_per_track=args.seconds_per_track,
                         max_frames=args.max_frames, kmeans_iters=args.kmeans_iters,
                         griffin_lim_iters=args.griffin_lim_iters, seed=args.seed)
    codec = fit_spectral(args.data, args.out, cfg, overwrite=args.force)
    print(f"wrote {args.out}: spectral codec {codec.n_q} x {codec.bins} bins, PCA {cfg.dim}, "
          f"{codec.sample_rate} Hz, {codec.frame_rate} Hz frames ({time.perf_counter() - t0:.0f} s)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_fit(args)
    except (CodecUnavailable, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
