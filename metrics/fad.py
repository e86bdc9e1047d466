"""Frechet Audio Distance and the embeddings it is computed on (Sec. 3.1, [20]).

FAD is the Frechet distance between Gaussians fitted to the embeddings of two populations of audio clips.
The paper used VGGish; we run VGGish in torch from a local weights file (torchvggish's converted weights, no
download), and otherwise an offline log-mel statistics embedding whose scores are labelled, in every output,
as not comparable with published FAD. Clips are resampled to 16 kHz with resampy's kaiser_best filter, as VGGish's
front end, and framed into 0.96 s log-mel examples either as the FAD reference tool does (default: the clip
normalised, 1 s windows every 0.5 s) or as VGGish's waveform_to_examples (non-overlapping); every result
records which (embedding_record).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import resampy
import scipy.linalg
import torch
from tqdm import tqdm


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


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2) of two covariances, as Tr (R S2 R)^(1/2) with R = S1^(1/2): two symmetric eigen-
    decompositions, several times faster than sqrtm (equal up to round-off for positive semi-definite S1, S2)."""
    w, v = np.linalg.eigh(sigma1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma2 @ root), 0.0, None)).sum())


def song_moments(per_clip: list[np.ndarray], song_index: np.ndarray, n_songs: int) -> tuple:
    """Per song, the count, sum [D] and sum of outer products [D, D] of its clips' embeddings (centred on the
    population mean, kept as the 4th item): a resample of songs then fits its Gaussian without the embeddings."""
    pooled = np.concatenate(per_clip, axis=0).astype(np.float64)
    shift = pooled.mean(axis=0)
    d = pooled.shape[1]
    counts, sums, outers = np.zeros(n_songs), np.zeros((n_songs, d)), np.zeros((n_songs, d, d))
    for clip, song in zip(per_clip, song_index):
        x = np.asarray(clip, dtype=np.float64) - shift
        counts[song] += len(x)
        sums[song] += x.sum(axis=0)
        outers[song] += x.T @ x
    return counts, sums, outers, shift


def weighted_gaussian(moments: tuple, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and covariance of the embeddings of songs taken `weights` [n_songs] times each (song_moments);
    None when fewer than 2 embeddings are taken."""
    counts, sums, outers, shift = moments
    n = float(weights @ counts)
    if n < 2:
        return None
    mean = (weights @ sums) / n
    cov = (np.tensordot(weights, outers, axes=1) - n * np.outer(mean, mean)) / (n - 1)
    return shift + mean, cov


def bootstrap_frechet(real: tuple, generated: tuple, draws: np.ndarray) -> np.ndarray:
    """FAD of each resample of songs: draws [B, n_songs] says how often each song is taken (both populations
    take the same songs); NaN where a side has fewer than 2 embeddings."""
    out = np.full(len(draws), np.nan)
    for b, weights in enumerate(np.asarray(draws, dtype=np.float64)):
        a, g = weighted_gaussian(real, weights), weighted_gaussian(generated, weights)
        if a is not None and g is not None:
            diff = a[0] - g[0]
            out[b] = max(diff @ diff + np.trace(a[1]) + np.trace(g[1]) - 2.0 * trace_sqrt_product(a[1], g[1]), 0.0)
    return out


def frechet_audio_distance(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """Frechet Audio Distance between two populations of embeddings [N_a, D] and [N_b, D]."""
    return frechet_distance(*gaussian_fit(emb_a, "first population"), *gaussian_fit(emb_b, "second population"))


# ---------------------------------------------------------------------------------------------------------
# The front end: resampling to 16 kHz, VGGish's log-mel, and two framings of it into 0.96 s examples

VGGISH_SR = 16000
VGGISH_WINDOW, VGGISH_HOP, VGGISH_FFT = 400, 160, 512  # 25 ms window, 10 ms hop at 16 kHz
VGGISH_MELS, VGGISH_FMIN, VGGISH_FMAX = 64, 125.0, 7500.0
VGGISH_PATCH = 96  # log-mel frames per example: 0.96 s
VGGISH_LOG_OFFSET = 0.01
VGGISH_RESAMPLER = "kaiser_best"  # resampy's filter, as VGGish's vggish_input.waveform_to_examples
# The shortest clip with one example: 96 frames of 400 samples, 160 apart (0.975 s).
VGGISH_MIN_SAMPLES = VGGISH_WINDOW + (VGGISH_PATCH - 1) * VGGISH_HOP
# google-research's frechet_audio_distance tool ([20]): 1 s windows every 8000 samples (0.5 s), each giving one
# example (the first 96 of its 98 frames); before that the clip is divided by its largest sample value, but
# by no less than 0.1 (a gain of at most 20 dB). Its largest value, not its largest magnitude: as the tool.
FAD_TOOL_WINDOW, FAD_TOOL_HOP, FAD_TOOL_MIN_PEAK = VGGISH_SR, VGGISH_SR // 2, 0.1

FRAMINGS = {
    "fad-tool": "clip divided by max(largest sample, 0.1), then one 0.96 s example per 1 s window every 0.5 s "
                "(google-research frechet_audio_distance, the paper's FAD [20])",
    "vggish": "non-overlapping 0.96 s examples, no normalisation (VGGish's waveform_to_examples)",
}
DEFAULT_FRAMING = "fad-tool"
FRAMING_MIN_SAMPLES = {"fad-tool": FAD_TOOL_WINDOW, "vggish": VGGISH_MIN_SAMPLES}  # at 16 kHz


def check_framing(framing: str) -> str:
    if framing not in FRAMINGS:
        raise FadError(f"unknown FAD framing {framing!r}: use {' or '.join(FRAMINGS)}")
    return framing


def resample_to_vggish(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """[S] mono audio at sample_rate -> float64 at 16 kHz, with resampy's kaiser_best filter as VGGish's front
    end (it rolls off above about 7 kHz: half amplitude at 0.917 x 8 kHz). At 16 kHz the samples pass as they are."""
    wav = np.asarray(wav, dtype=np.float64)
    if sample_rate == VGGISH_SR:
        return wav
    if int(wav.shape[-1] * VGGISH_SR / sample_rate) < 1:  # too short for one output sample (resampy refuses it)
        return np.zeros(0)
    return resampy.resample(wav, sample_rate, VGGISH_SR, filter=VGGISH_RESAMPLER)


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


def vggish_log_mel(wav16k: np.ndarray) -> np.ndarray:
    """VGGish's log-mel frames [F, 64] of [S] audio at 16 kHz; F = 0 when S < 400."""
    wav = np.asarray(wav16k, dtype=np.float64)
    n_frames = 1 + (wav.size - VGGISH_WINDOW) // VGGISH_HOP if wav.size >= VGGISH_WINDOW else 0
    idx = np.arange(VGGISH_WINDOW)[None] + VGGISH_HOP * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(VGGISH_WINDOW) / VGGISH_WINDOW)  # periodic Hann
    spec = np.abs(np.fft.rfft(wav[idx] * window, VGGISH_FFT))  # [F, 257] magnitude
    return np.log(spec @ vggish_mel_matrix() + VGGISH_LOG_OFFSET)  # [F, 64]


def vggish_patches(wav16k: np.ndarray) -> np.ndarray:
    """Framing "vggish": [N, 96, 64] non-overlapping log-mel examples of [S] audio at 16 kHz, as VGGish's
    waveform_to_examples; N = 0 for clips shorter than 0.975 s (no padding)."""
    logmel = vggish_log_mel(wav16k)
    n = logmel.shape[0] // VGGISH_PATCH
    return logmel[: n * VGGISH_PATCH].reshape(n, VGGISH_PATCH, VGGISH_MELS).astype(np.float32)


def fad_tool_normalise(wav16k: np.ndarray) -> np.ndarray:
    """The FAD tool's loudness normalisation: the clip divided by max(its largest sample, 0.1)."""
    wav = np.asarray(wav16k, dtype=np.float64)
    return wav / max(FAD_TOOL_MIN_PEAK, float(wav.max()) if wav.size else 0.0)


def fad_tool_patches(wav16k: np.ndarray) -> np.ndarray:
    """Framing "fad-tool": [N, 96, 64], one example per 1 s window of the normalised clip, windows every 0.5 s
    (N = 1 + (S - 16000) // 8000, 0 for clips shorter than 1 s). A window starting at sample 8000 k has the
    STFT frames 50 k ... of the whole clip, so the log-mel is computed once and sliced."""
    wav = fad_tool_normalise(wav16k)
    n = 1 + (wav.size - FAD_TOOL_WINDOW) // FAD_TOOL_HOP if wav.size >= FAD_TOOL_WINDOW else 0
    logmel = vggish_log_mel(wav)
    step = FAD_TOOL_HOP // VGGISH_HOP  # 50 frames
    idx = step * np.arange(n)[:, None] + np.arange(VGGISH_PATCH)[None]
    return logmel[idx].reshape(n, VGGISH_PATCH, VGGISH_MELS).astype(np.float32)


def frame_examples(wav16k: np.ndarray, framing: str = DEFAULT_FRAMING) -> np.ndarray:
    """[S] audio at 16 kHz -> VGGish input examples [N, 96, 64] with the given framing (N may be 0)."""
    return {"fad-tool": fad_tool_patches, "vggish": vggish_patches}[check_framing(framing)](wav16k)


# ---------------------------------------------------------------------------------------------------------
# Embeddings: VGGish, and the offline log-mel statistics

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


class _Embedding:
    """What the embeddings share: a framing of each clip into VGGish examples, and a note saying both."""
    sample_rate = VGGISH_SR
    description = ""

    def __init__(self, framing: str = DEFAULT_FRAMING):
        self.framing = check_framing(framing)

    @property
    def note(self) -> str:
        return f"{self.description}; framing {self.framing}: {FRAMINGS[self.framing]}"


class VGGishEmbedding(_Embedding):
    """The paper's FAD embedding, from a local weights file (a state dict with VGGish's parameter names)."""
    name = "vggish"
    dim = 128
    comparable = True
    description = "VGGish (AudioSet) raw 128-d embeddings of 0.96 s log-mel examples, as the paper's FAD"

    def __init__(self, weights: str, device: str | torch.device = "cpu", framing: str = DEFAULT_FRAMING):
        super().__init__(framing)
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
        """[S] mono audio at 16 kHz -> [N, 128], one row per example of the framing (N may be 0)."""
        patches = frame_examples(wav16k, self.framing)
        if patches.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.net(torch.from_numpy(patches).to(self.device)).float().cpu().numpy()


class LogMelEmbedding(_Embedding):
    """Offline embedding: mean and standard deviation of VGGish's log-mel bands over each 0.96 s example (128-d).

    Needs no weights; its FAD values are NOT comparable with published (VGGish) FAD.
    """
    name = "logmel-stats"
    dim = 2 * VGGISH_MELS
    comparable = False
    description = ("offline log-mel statistics (mean and std of 64 log-mel bands per 0.96 s example); "
                   "NOT comparable with published VGGish FAD")

    def __call__(self, wav16k: np.ndarray) -> np.ndarray:
        p = frame_examples(wav16k, self.framing)  # [N, 96, 64]
        return np.concatenate([p.mean(axis=1), p.std(axis=1)], axis=1)


def load_embedding(name: str, vggish_weights: str | None = None, device="cpu", framing: str = DEFAULT_FRAMING):
    """The FAD embedding by name: "logmel" (offline) or "vggish" (needs --vggish-weights), with the framing
    of clips into examples: "fad-tool" (default, the FAD reference tool's) or "vggish" (FRAMINGS)."""
    check_framing(framing)
    if name == "logmel":
        return LogMelEmbedding(framing)
    if name == "vggish":
        if not vggish_weights:
            raise FadError("--embedding vggish needs --vggish-weights PATH (a local VGGish state dict, e.g. "
                                "torchvggish's vggish-10086976.pth; nothing is downloaded), or use --embedding logmel")
        return VGGishEmbedding(vggish_weights, device, framing)
    raise FadError(f"unknown embedding {name!r}: use logmel or vggish")


def embed_clips(embedding, wavs: list[np.ndarray], sample_rate: int, progress: bool = False,
                desc: str = "embed") -> list[np.ndarray]:
    """Each clip's embeddings [N_i, D]: resampled to 16 kHz as VGGish does, framed with the embedding's framing;
    N_i = 0 for a clip too short for one example (under 1 s for "fad-tool", 0.975 s for "vggish")."""
    return [embedding(resample_to_vggish(w, sample_rate))
            for w in tqdm(wavs, desc=desc, unit="clip", disable=not progress, leave=False)]


def embed_population(embedding, wavs: list[np.ndarray], sample_rate: int, progress: bool = False,
                     desc: str = "embed") -> np.ndarray:
    """Embeddings of every example of every clip, pooled: [sum of N_i, D] (as FAD pools VGGish frames).

    A clip too short for one example adds nothing, as in the references (torchvggish and TensorFlow's
    waveform_to_examples give it no example, the FAD tool no window); such clips are counted in a warning.
    A population in which no clip gives an example is a FadError.
    """
    return pool_clips(embed_clips(embedding, wavs, sample_rate, progress, desc), embedding.framing, desc)


def pool_clips(per_clip: list[np.ndarray], framing: str, desc: str = "embed") -> np.ndarray:
    """embed_clips' per-clip embeddings pooled [sum of N_i, D], short clips counted in a warning
    (embed_population)."""
    short = sum(e.shape[0] == 0 for e in per_clip)
    min_seconds = FRAMING_MIN_SAMPLES[framing] / VGGISH_SR
    if short == len(per_clip):
        raise FadError(f"{desc}: none of the {len(per_clip)} clips gives an example (framing {framing} "
                       f"needs clips of at least {min_seconds:g} s)")
    if short:
        warnings.warn(f"{desc}: {short} of {len(per_clip)} clips are shorter than {min_seconds:g} s and give no "
                      f"example (framing {framing}); they are left out of FAD, as in the reference",
                      stacklevel=3)
    return np.concatenate(per_clip, axis=0)


def embedding_record(embedding) -> dict:
    """What a FAD result records about its embedding: name, framing, resampling, comparability."""
    return {"name": embedding.name, "framing": embedding.framing, "sample_rate": embedding.sample_rate,
            "resampler": f"resampy {VGGISH_RESAMPLER}", "min_clip_seconds":
            FRAMING_MIN_SAMPLES[embedding.framing] / VGGISH_SR, "dim": embedding.dim,
            "comparable_with_published_fad": embedding.comparable, "note": embedding.note}
