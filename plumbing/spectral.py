"""The offline spectral RVQ codec (ours, not the paper's): the codec, its file and its fitting (the root's
spectral.py is its `fit` command).

The paper tokenizes with the 32 kHz Encodec (codec.py). This codec has the same interface (`codec.Codec`)
and needs no download: STFT frames at 50 Hz, power-compressed magnitude |X|^0.3, reduced by PCA, quantized
by residual k-means, decoded by inverting the PCA and recovering phase with fast Griffin-Lim. It is fitted
on the user's own data and stored inside checkpoints (`spec()`), so a checkpoint carries its tokenizer.

    python spectral.py fit --data DIR --out FILE        # fit on the train split of a Slakh-layout folder
    python bench.py codec --codec FILE --data DIR       # its round-trip quality on held-out audio
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from plumbing.audio import AudioError, atomic_write, audio_info, load_mono
from codec import Codec, CodecUnavailable, pad_to_frames
from plumbing.slakh import find_tracks

FIT_HINT = "python spectral.py fit --data DATA_DIR --out FILE"


@dataclass(frozen=True)
class SpectralConfig:
    """The spectral codec's settings and their defaults: the one place `fit_spectral`, the `fit` command and
    `SpectralCodec` take them from."""
    sample_rate: int = 32000          # Hz, as the paper's Encodec, so that the two codecs are interchangeable
    frame_rate: int = 50              # token frames per second; hop = sample_rate / frame_rate (640 samples)
    n_fft: int = 2048                 # STFT size in samples; one frame centred on every multiple of the hop
    power: float = 0.3                # magnitude compression |X|^power (a log floor spends the PCA on noise)
    weighting: str = "octave"         # "octave": every octave weighs the same in PCA and k-means; "flat": every bin
    floor_hz: float = 40.0            # below this the octave weighting stays constant
    dim: int = 64                     # PCA dimensions kept of the n_fft / 2 + 1 magnitude bins
    n_q: int = 4                      # residual k-means levels (the paper's Encodec has 4)
    bins: int = 1024                  # codewords per level
    seconds_per_track: float = 10.0   # audio read per track when fitting (one random window of each)
    max_frames: int = 100_000         # STFT frames kept for fitting (a random subset beyond that)
    kmeans_iters: int = 20            # Lloyd iterations per level
    griffin_lim_iters: int = 32       # phase-recovery iterations when decoding (64 or 128 change SC by < 0.01)
    seed: int = 0                     # seeds fitting's draws and decoding's initial phases

    @property
    def hop(self) -> int:
        return self.sample_rate // self.frame_rate


# ---- STFT, Griffin-Lim and residual VQ ------------------------------------------------------------------

def stft(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Hann-window STFT of [B, S] with frames centred on multiples of hop (zero padding): [B, S // hop + 1, F]."""
    x = F.pad(wav, (n_fft // 2, n_fft // 2))
    return torch.fft.rfft(x.unfold(-1, n_fft, hop) * torch.hann_window(n_fft, device=wav.device))


def istft(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    """Least-squares inverse of `stft` (windowed overlap-add over the squared-window envelope): [B, length].

    Each frame is cut into ceil(n_fft / hop) blocks of `hop` samples, so overlap-add is a few shifted adds.
    """
    k = -(-n_fft // hop)
    window = torch.hann_window(n_fft, device=spec.device)
    frames = torch.fft.irfft(spec, n=n_fft) * window                                 # [B, T, n_fft]
    B, T, _ = frames.shape
    blocks = F.pad(frames, (0, k * hop - n_fft)).reshape(B, T, k, hop)
    wsq = F.pad(window.pow(2), (0, k * hop - n_fft)).reshape(k, hop)
    out = frames.new_zeros(B, T + k - 1, hop)
    envelope = frames.new_zeros(T + k - 1, hop)
    for j in range(k):
        out[:, j:j + T] += blocks[:, :, j]
        envelope[j:j + T] += wsq[j]
    out = (out / envelope.clamp_min(1e-11)).reshape(B, -1)                           # [B, (T + k - 1) * hop]
    return out[:, n_fft // 2:n_fft // 2 + length]


WEIGHTINGS = ("octave", "flat")


def bin_weights(weighting: str, n_fft: int, sample_rate: int, floor_hz: float = SpectralConfig.floor_hz
                ) -> torch.Tensor:
    """[n_fft/2+1] per-bin weights applied before PCA and k-means (and removed when decoding).

    A linear STFT gives each octave twice the bins of the one below: at 2048 points and 32 kHz, 40-500 Hz (where
    bass and the lower voices have their fundamentals) is 30 of 1025 bins, so a squared error spends the PCA and
    the codebooks on the top octaves and level 0 keeps the loudness and the timbre but little of the pitch.
    "octave" scales bin f by sqrt(floor / max(f, floor)), so that each octave's bins weigh the same in total;
    "flat" weighs every bin 1.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if not floor_hz > 0:
        raise ValueError(f"the octave weighting's floor must be above 0 Hz, got {floor_hz}")
    n = n_fft // 2 + 1
    if weighting == "flat":
        return torch.ones(n)
    hz = torch.arange(n, dtype=torch.float64) * sample_rate / n_fft
    return (floor_hz / hz.clamp_min(floor_hz)).sqrt().float()


def compressed_magnitude(wav: torch.Tensor, n_fft: int, hop: int, power: float) -> torch.Tensor:
    """|STFT|^power of [B, S] (S a multiple of hop), one frame per hop centred on it: [B, S / hop, n_fft/2+1]."""
    return stft(wav, n_fft, hop)[:, :-1].abs().pow(power)


def griffin_lim(mag: torch.Tensor, n_fft: int, hop: int, n_iter: int, generator: torch.Generator,
                momentum: float = 0.99) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013): a signal whose STFT magnitude approaches `mag`.

    Args:
        mag: [B, T + 1, F] STFT magnitudes (frames centred on multiples of `hop`).
    Returns:
        [B, T * hop] waveform.
    """
    length = (mag.shape[1] - 1) * hop
    phase = torch.rand(mag.shape, generator=generator, device=mag.device) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(mag), phase)
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = stft(istft(mag * angles, n_fft, hop, length), n_fft, hop)
        angles = rebuilt - previous * (momentum / (1 + momentum))
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return istft(mag * angles, n_fft, hop, length)


def nearest(x: torch.Tensor, centers: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest centre for each row of x [N, D] (in row chunks)."""
    c_sq = centers.pow(2).sum(1)
    dists, idxs = [], []
    for part in x.split(chunk):
        d, i = (part.pow(2).sum(1, keepdim=True) - 2 * part @ centers.T + c_sq).min(1)  # over [n, K]
        dists.append(d.clamp_min(0))
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def rvq_encode(z: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Residual VQ: at each level the nearest codeword to what the levels before left. [N, D] -> [N, Q]."""
    codes = []
    residual = z
    for book in codebooks:  # [K, D]
        idx = nearest(residual, book)[1]
        residual = residual - book[idx]
        codes.append(idx)
    return torch.stack(codes, 1)


def rvq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Sum of the chosen codeword of every level: [N, Q] -> [N, D]."""
    return sum(codebooks[q][codes[:, q]] for q in range(codebooks.shape[0]))


# ---- The codec and its file -----------------------------------------------------------------------------

class SpectralCodec(Codec):
    """Offline RVQ codec: |STFT|^power frames at 50 Hz -> PCA -> residual k-means; Griffin-Lim to decode."""

    name = "spectral"

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, codebooks: torch.Tensor,
                 weight: torch.Tensor | None = None,
                 sample_rate: int = SpectralConfig.sample_rate, frame_rate: int = SpectralConfig.frame_rate,
                 n_fft: int = SpectralConfig.n_fft, power: float = SpectralConfig.power,
                 griffin_lim_iters: int = SpectralConfig.griffin_lim_iters, seed: int = SpectralConfig.seed,
                 source: str | None = None):
        if sample_rate % frame_rate:
            raise ValueError(f"frame_rate {frame_rate} must divide sample_rate {sample_rate}")
        self.sample_rate, self.frame_rate = int(sample_rate), int(frame_rate)
        self.hop = self.sample_rate // self.frame_rate
        self.n_fft, self.power = int(n_fft), float(power)
        self.griffin_lim_iters, self.seed, self.source = int(griffin_lim_iters), int(seed), source
        self.mean = mean.float()            # [F] mean compressed-magnitude frame
        self.weight = (torch.ones_like(self.mean) if weight is None else weight.float())  # [F] bin_weights
        self.basis = basis.float()          # [D, F] orthonormal PCA directions
        self.codebooks = codebooks.float()  # [Q, K, D] residual k-means codewords
        self.n_q, self.bins = int(codebooks.shape[0]), int(codebooks.shape[1])
        if (self.mean.shape[0] != self.n_fft // 2 + 1 or self.weight.shape != self.mean.shape
                or self.basis.shape != (codebooks.shape[2], self.mean.shape[0])):
            raise ValueError("inconsistent spectral codec arrays (mean / basis / codebooks shapes do not match)")

    @property
    def device(self) -> torch.device:
        return self.codebooks.device

    def to(self, device) -> "SpectralCodec":
        arrays = (self.mean, self.weight, self.basis, self.codebooks)
        self.mean, self.weight, self.basis, self.codebooks = (t.to(device) for t in arrays)
        return self

    def codewords(self) -> torch.Tensor:
        return self.codebooks                   # [n_q, bins, dim], in PCA coordinates of the compressed magnitude

    def spec(self) -> dict:
        return {"name": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                "n_fft": self.n_fft, "power": self.power, "griffin_lim_iters": self.griffin_lim_iters,
                "seed": self.seed, "source": self.source or "", "mean": self.mean.cpu(), "weight": self.weight.cpu(),
                "basis": self.basis.cpu(), "codebooks": self.codebooks.cpu()}

    def project(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, 1, T * hop] -> PCA coordinates of the weighted compressed magnitude frames [B, T, D]."""
        feats = compressed_magnitude(wav[:, 0], self.n_fft, self.hop, self.power)  # [B, T, F]
        return ((feats - self.mean) * self.weight) @ self.basis.T

    def _encode(self, wav):
        z = self.project(wav)  # [B, T, D]
        B, T, D = z.shape
        return rvq_encode(z.reshape(B * T, D), self.codebooks).reshape(B, T, self.n_q).transpose(1, 2)

    def _decode(self, tokens):
        B, Q, T = tokens.shape
        z = rvq_decode(tokens.transpose(1, 2).reshape(B * T, Q), self.codebooks).reshape(B, T, -1)
        feats = (z @ self.basis / self.weight + self.mean).clamp_min(0)  # [B, T, F]
        mag = feats.pow(1 / self.power)
        mag = torch.cat([mag, mag[:, -1:]], 1)                           # [B, T + 1, F]: stft's frame count
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return griffin_lim(mag, self.n_fft, self.hop, self.griffin_lim_iters, generator)[:, None]


def save_spectral(codec: SpectralCodec, path: str, overwrite: bool = False) -> None:
    """Write a fitted spectral codec (its spec dict) atomically; refuse to overwrite unless asked."""
    atomic_write(path, lambda tmp: torch.save(codec.spec(), tmp), ".pt", overwrite)


def load_spectral_file(path: str) -> dict:
    """Read the spec dict of a fitted spectral codec file."""
    if not os.path.isfile(path):
        raise CodecUnavailable(f"spectral codec file not found: {path}\nFit one with `{FIT_HINT}`.")
    try:
        spec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CodecUnavailable(f"cannot read spectral codec file {path}: {e}") from None
    if not isinstance(spec, dict) or spec.get("name") != "spectral":
        raise CodecUnavailable(f"{path} is not a spectral codec file (made by `{FIT_HINT}`)")
    spec["source"] = spec.get("source") or path
    return spec


def spectral_from_spec(spec: dict, device="cpu", weights: str | None = None) -> SpectralCodec:
    """Rebuild a spectral codec from its `spec()` (a checkpoint's), or from its file when the spec holds no arrays.

    `weights` names that file and takes precedence over the spec's own `source`.
    """
    if "codebooks" not in spec:
        src = weights or spec.get("source")
        if not src:
            raise CodecUnavailable("this spectral codec spec holds no arrays and no file; pass --codec-weights")
        spec = load_spectral_file(src)
    return SpectralCodec(spec["mean"], spec["basis"], spec["codebooks"], spec.get("weight"), spec["sample_rate"],
                         spec["frame_rate"],
                         spec["n_fft"], spec["power"], spec["griffin_lim_iters"], spec["seed"],
                         spec.get("source") or None).to(device)


# ---- Fitting --------------------------------------------------------------------------------------------

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
