"""Frechet Audio Distance and the embeddings it is computed on (Sec. 3.1, [20]).

FAD is the Frechet distance between Gaussians fitted to the embeddings of two populations of audio clips.
The paper used VGGish; we run VGGish in torch from a local weights file (torchvggish's converted weights, no
download), and otherwise an offline log-mel statistics embedding whose scores are labelled, in every output,
as not comparable with published FAD.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.linalg
import torch
from tqdm import tqdm

import audio


class FadError(ValueError):
    """A problem the user can fix (missing or foreign VGGish weights, too few embeddings); one line."""


# ---------------------------------------------------------------------------------------------------------
# FAD (Sec. 3.1, [20])

def gaussian_fit(emb: np.ndarray, what: str = "population") -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] of embeddings [N, D]; warns when N < D (singular covariance)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise FadError(f"{what}: need at least 2 embeddings to fit a Gaussian, got shape {emb.shape}")
    n, d = emb.shape
    if n < d:
        warnings.warn(f"{what}: {n} embeddings for a {d}-dimensional Gaussian; the covariance is singular and "
                      f"FAD is biased and noisy (use more examples, the paper uses 400 clips)", stacklevel=2)
    return emb.mean(axis=0), np.cov(emb, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's sqrtm and its real part ([20])."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):  # singular product: regularise both covariances slightly
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)  # round-off leaves tiny imaginary parts
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean), 0.0))


def frechet_audio_distance(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """Frechet Audio Distance between two populations of embeddings [N_a, D] and [N_b, D]."""
    return frechet_distance(*gaussian_fit(emb_a, "first population"), *gaussian_fit(emb_b, "second population"))


# ---------------------------------------------------------------------------------------------------------
# Embeddings: the VGGish front end, VGGish, and the offline log-mel statistics

VGGISH_SR = 16000
VGGISH_WINDOW, VGGISH_HOP, VGGISH_FFT = 400, 160, 512  # 25 ms window, 10 ms hop at 16 kHz
VGGISH_MELS, VGGISH_FMIN, VGGISH_FMAX = 64, 125.0, 7500.0
VGGISH_PATCH = 96  # frames per example: 0.96 s, non-overlapping
VGGISH_LOG_OFFSET = 0.01


def _hz_to_mel_htk(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def vggish_mel_matrix() -> np.ndarray:
    """VGGish's mel filterbank [FFT/2 + 1, 64]: triangles in HTK mel, 125-7500 Hz, DC bin zeroed."""
    n_bins = VGGISH_FFT // 2 + 1
    bin_mel = _hz_to_mel_htk(np.linspace(0.0, VGGISH_SR / 2, n_bins))
    edges = np.linspace(_hz_to_mel_htk(VGGISH_FMIN), _hz_to_mel_htk(VGGISH_FMAX), VGGISH_MELS + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (bin_mel[:, None] - lo) / (mid - lo)
    down = (hi - bin_mel[:, None]) / (hi - mid)
    w = np.maximum(0.0, np.minimum(up, down))
    w[0] = 0.0
    return w


def vggish_patches(wav: np.ndarray) -> np.ndarray:
    """VGGish input examples from [S] mono audio at 16 kHz: log-mel patches [N, 96, 64] (at least one)."""
    wav = np.asarray(wav, dtype=np.float64)
    min_len = VGGISH_WINDOW + (VGGISH_PATCH - 1) * VGGISH_HOP  # one full patch
    if wav.size < min_len:
        wav = np.pad(wav, (0, min_len - wav.size))
    n_frames = 1 + (wav.size - VGGISH_WINDOW) // VGGISH_HOP
    idx = np.arange(VGGISH_WINDOW)[None] + VGGISH_HOP * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(VGGISH_WINDOW) / VGGISH_WINDOW)  # periodic Hann
    spec = np.abs(np.fft.rfft(wav[idx] * window, VGGISH_FFT))  # [F, 257] magnitude
    logmel = np.log(spec @ vggish_mel_matrix() + VGGISH_LOG_OFFSET)  # [F, 64]
    n = n_frames // VGGISH_PATCH
    return logmel[: n * VGGISH_PATCH].reshape(n, VGGISH_PATCH, VGGISH_MELS).astype(np.float32)


class VGGish(torch.nn.Module):
    """VGGish ([20], AudioSet): VGG-like conv stack on 96 x 64 log-mel patches, three FC layers, 128-d output.

    Parameter names follow harritaylor/torchvggish's converted weights (`features.*`, `embeddings.*`), so its
    vggish-10086976.pth loads as is. The last layer has no ReLU, as TensorFlow's vggish_slim; we use the raw
    128-d embedding (before PCA and quantisation), as the FAD reference implementation does.
    """

    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for c in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if c == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(c_in, c, 3, 1, 1), torch.nn.ReLU(inplace=True)]
                c_in = c
        self.features = torch.nn.Sequential(*layers)
        self.embeddings = torch.nn.Sequential(
            torch.nn.Linear(512 * 6 * 4, 4096), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(4096, 4096), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(4096, 128))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """[N, 96, 64] log-mel patches -> [N, 128] embeddings."""
        x = self.features(patches[:, None])  # [N, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # channels last, as the TensorFlow original
        return self.embeddings(x)


class VGGishEmbedding:
    """The paper's FAD embedding, from a local weights file (a state dict with VGGish's parameter names)."""
    name = "vggish"
    sample_rate = VGGISH_SR
    dim = 128
    comparable = True
    note = "VGGish (AudioSet) 128-d embeddings of 0.96 s log-mel patches, as the paper's FAD"

    def __init__(self, weights: str, device: str | torch.device = "cpu"):
        if not os.path.isfile(weights):
            raise FadError(f"--vggish-weights {weights}: file not found (give a local VGGish state dict, "
                                f"e.g. torchvggish's vggish-10086976.pth)")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FadError(f"--vggish-weights {weights}: cannot read it as a torch state dict: {e}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        with torch.device("meta"):  # no random initialisation: every parameter comes from the file
            net = VGGish()
        expected = set(net.state_dict())
        state = {k: v.float() for k, v in state.items() if k in expected and torch.is_tensor(v)} \
            if isinstance(state, dict) else {}
        missing = sorted(expected - set(state))
        if missing:
            raise FadError(f"--vggish-weights {weights}: not VGGish weights (missing {', '.join(missing[:3])}"
                                f"{'...' if len(missing) > 3 else ''}); expected torchvggish's parameter names")
        try:
            net.load_state_dict(state, assign=True)
        except RuntimeError as e:
            raise FadError(f"--vggish-weights {weights}: shapes do not match VGGish: {e}") from None
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, wav16k: np.ndarray) -> np.ndarray:
        """[S] mono audio at 16 kHz -> [n_patches, 128]."""
        patches = torch.from_numpy(vggish_patches(wav16k)).to(self.device)
        return self.net(patches).float().cpu().numpy()


class LogMelEmbedding:
    """Offline embedding: mean and standard deviation of VGGish's log-mel bands over each 0.96 s patch (128-d).

    Needs no weights; its FAD values are NOT comparable with published (VGGish) FAD.
    """
    name = "logmel-stats"
    sample_rate = VGGISH_SR
    dim = 2 * VGGISH_MELS
    comparable = False
    note = ("offline log-mel statistics (mean and std of 64 log-mel bands per 0.96 s patch); "
            "NOT comparable with published VGGish FAD")

    def __call__(self, wav16k: np.ndarray) -> np.ndarray:
        p = vggish_patches(wav16k)  # [N, 96, 64]
        return np.concatenate([p.mean(axis=1), p.std(axis=1)], axis=1)


def load_embedding(name: str, vggish_weights: str | None = None, device="cpu"):
    """The FAD embedding by name: "logmel" (offline) or "vggish" (needs --vggish-weights)."""
    if name == "logmel":
        return LogMelEmbedding()
    if name == "vggish":
        if not vggish_weights:
            raise FadError("--embedding vggish needs --vggish-weights PATH (a local VGGish state dict, e.g. "
                                "torchvggish's vggish-10086976.pth; nothing is downloaded), or use --embedding logmel")
        return VGGishEmbedding(vggish_weights, device)
    raise FadError(f"unknown embedding {name!r}: use logmel or vggish")


def embed_population(embedding, wavs: list[np.ndarray], sample_rate: int, progress: bool = False,
                     desc: str = "embed") -> np.ndarray:
    """Embeddings of every patch of every clip, pooled: [sum of patches, D] (as FAD pools VGGish frames)."""
    out = [embedding(audio.resample(np.asarray(w, dtype=np.float32), sample_rate, embedding.sample_rate))
           for w in tqdm(wavs, desc=desc, unit="clip", disable=not progress, leave=False)]
    return np.concatenate(out, axis=0)


def embedding_record(embedding) -> dict:
    return {"name": embedding.name, "sample_rate": embedding.sample_rate, "dim": embedding.dim,
            "comparable_with_published_fad": embedding.comparable, "note": embedding.note}
