"""The offline spectral codec's signal processing (ours, not the paper's): its settings, STFT and Griffin-Lim,
the octave weighting, and residual vector quantisation.

The paper tokenizes with the 32 kHz Encodec. The offline codec (codec.SpectralCodec, same interface) needs no
download: STFT frames at 50 Hz, power-compressed magnitude |X|^0.3, reduced by PCA, quantized by residual
k-means, decoded by inverting the PCA and recovering phase with fast Griffin-Lim. fit.py fits it on your data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FIT_HINT = "python -m spectral.fit --data DATA_DIR --out FILE"


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


def transpose_frames(feats: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """Magnitude frames [B, T, n_fft/2+1] at linear bins, each moved in pitch by its own number of semitones [B, T]:
    the bin at f takes the magnitude at f / 2^(s/12) (linear interpolation; above the top bin, 0). Every partial of
    a frame moves by the same ratio, so a chord becomes the same chord in another key, at the same time; 0 keeps a
    frame as it is. The harmony term's negative (masking.harmony_plan) is built with it."""
    n = feats.shape[-1]
    ratio = torch.pow(2.0, semitones.to(feats.dtype) / 12.0)[..., None]                 # [B, T, 1]
    src = torch.arange(n, device=feats.device, dtype=feats.dtype) / ratio                 # [B, T, F], in bins
    lo = src.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (src - lo.to(feats.dtype)).clamp(0, 1)
    out = feats.gather(-1, lo) * (1 - w) + feats.gather(-1, hi) * w
    return out.masked_fill(src > n - 1, 0.0)


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
