"""The audio tokenizer (Sec. 2.1, Sec. 3): one small interface, the paper's 32 kHz Encodec, an offline codec.

Both channels of StemGen (context mix and target stem) are sequences of residual-vector-quantized tokens
`[B, Q, T]` at 50 Hz. The paper uses the public MusicGen Encodec (32 kHz, 4 levels x 2048 bins, Sec. 3).
That checkpoint needs a download, so an offline codec with the same interface is provided too:

- `encodec_32khz`: transformers' `EncodecModel` loaded from `facebook/encodec_32khz` (hub or a local copy).
- `spectral`: STFT frames at 50 Hz, power-compressed magnitude |X|^0.3, reduced by PCA, quantized by
  residual k-means, decoded by inverting the PCA and recovering phase with (fast) Griffin-Lim. It is fitted
  on the user's own data (`python codec.py fit --data DIR --out FILE`) and stored inside checkpoints.

`python codec.py measure --codec FILE --data DIR` reports the round-trip quality of a fitted codec on
held-out audio (spectral convergence and chroma similarity).
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from audio import AudioError, atomic_write, audio_info, check_finite, load_mono, resample, to_mono

ENCODEC_HUB_ID = "facebook/encodec_32khz"

# The architecture of facebook/encodec_32khz (MusicGen's tokenizer) in transformers' EncodecConfig terms:
# 32 kHz mono, strides 8*5*4*4 = 640 samples (50 Hz), 2.2 kbps = 4 codebooks of 2048 entries, non-causal.
ENCODEC_32KHZ_CONFIG = dict(
    sampling_rate=32000, audio_channels=1, normalize=False, chunk_length_s=None, overlap=None,
    hidden_size=128, num_filters=64, num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4],
    norm_type="weight_norm", kernel_size=7, last_kernel_size=7, residual_kernel_size=3,
    dilation_growth_rate=2, use_causal_conv=False, pad_mode="reflect", compress=2, num_lstm_layers=2,
    trim_right_ratio=1.0, codebook_size=2048, codebook_dim=128, use_conv_shortcut=False,
    target_bandwidths=[2.2],
)

AUDIO_EXTENSIONS = (".flac", ".wav")


class CodecUnavailable(RuntimeError):
    """The codec's weights (or fitted file) cannot be had here; the message says how to get them."""


# ----------------------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------------------

def check_wav(wav: torch.Tensor) -> None:
    """Raise ValueError unless `wav` is a finite, non-empty float tensor [B, 1, S]."""
    if not isinstance(wav, torch.Tensor):
        raise ValueError(f"codec input must be a torch.Tensor [B, 1, S], got {type(wav).__name__}")
    if wav.dim() != 3 or wav.shape[1] != 1:
        raise ValueError(f"codec input must have shape [B, 1, S] (mono, batched), got {list(wav.shape)}; "
                         "average channels to mono and add the batch axis first")
    if not wav.is_floating_point():
        raise ValueError(f"codec input must be floating point audio, got {wav.dtype}")
    if wav.shape[0] == 0 or wav.shape[2] == 0:
        raise ValueError(f"codec input is empty (shape {list(wav.shape)})")
    if not bool(torch.isfinite(wav).all()):
        raise ValueError("codec input contains NaN or infinite samples")


def check_tokens(tokens: torch.Tensor, n_q: int, bins: int) -> None:
    """Raise ValueError unless `tokens` is an integer tensor [B, n_q, T] with ids in [0, bins)."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens must be a torch.Tensor [B, Q, T], got {type(tokens).__name__}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must have shape [B, Q, T], got {list(tokens.shape)}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
    if tokens.shape[1] != n_q:
        raise ValueError(f"tokens have {tokens.shape[1]} levels but this codec has n_q={n_q}; "
                         "were they made by another codec?")
    if tokens.shape[0] == 0 or tokens.shape[2] == 0:
        raise ValueError(f"tokens are empty (shape {list(tokens.shape)})")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= bins:
        raise ValueError(f"token ids must lie in [0, {bins}), got values in [{lo}, {hi}] "
                         f"(a MASK id {bins} left in the sequence, or tokens from another codec?)")


def pad_to_frames(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """Zero-pad [B, 1, S] at the end to T * hop samples, T = ceil(S / hop)."""
    frames = -(-wav.shape[-1] // hop)
    return F.pad(wav, (0, frames * hop - wav.shape[-1]))


class Codec:
    """A tokenizer: `encode` [B, 1, S] -> [B, Q, T] at `frame_rate` Hz, `decode` [B, Q, T] -> [B, 1, T * hop].

    Subclasses implement `_encode` (input already checked, on the device, padded to whole frames) and
    `_decode` (tokens already checked, on the device), `spec`, `to` and `device`.
    """

    name: str
    sample_rate: int
    frame_rate: int
    hop: int
    n_q: int
    bins: int

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device) -> "Codec":
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Tokenize mono audio at `sample_rate`.

        Args:
            wav: FloatTensor [B, 1, S], any device; zero-padded inside to whole frames.
        Returns:
            LongTensor [B, n_q, ceil(S / hop)] on the codec's device, ids in [0, bins).
        """
        check_wav(wav)
        wav = pad_to_frames(wav.to(self.device, torch.float32), self.hop)  # [B, 1, T * hop]
        tokens = self._encode(wav).long()
        expected = (wav.shape[0], self.n_q, wav.shape[-1] // self.hop)
        if tuple(tokens.shape) != expected:
            raise RuntimeError(f"{self.name} produced tokens {list(tokens.shape)}, expected {list(expected)}")
        return tokens

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Turn tokens back into audio.

        Args:
            tokens: LongTensor [B, n_q, T], ids in [0, bins).
        Returns:
            FloatTensor [B, 1, T * hop] at `sample_rate` on the codec's device (trim to the input length).
        """
        check_tokens(tokens, self.n_q, self.bins)
        length = tokens.shape[-1] * self.hop
        wav = self._decode(tokens.to(self.device).long()).float()  # [B, 1, ~T * hop]
        wav = wav[..., :length]
        return F.pad(wav, (0, length - wav.shape[-1]))

    def encode_audio(self, x: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Tokenize a numpy buffer ([S] or [C, S]) at any rate: mono downmix, soxr resampling. -> [1, Q, T]."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim not in (1, 2):
            raise ValueError(f"audio must be [S] or [C, S], got shape {x.shape}")
        x = to_mono(x)
        check_finite(x, "audio")
        x = resample(x, sample_rate, self.sample_rate)
        return self.encode(torch.from_numpy(np.ascontiguousarray(x))[None, None])

    def decode_audio(self, tokens: torch.Tensor, length: int | None = None) -> np.ndarray:
        """Decode [1, Q, T] (or [Q, T]) to a numpy buffer [S] at `sample_rate`, trimmed to `length` samples."""
        if tokens.dim() == 2:
            tokens = tokens[None]
        if tokens.shape[0] != 1:
            raise ValueError(f"decode_audio takes one sequence [1, Q, T], got {list(tokens.shape)}")
        y = self.decode(tokens)[0, 0].cpu().numpy()
        return y if length is None else y[:length]


# ----------------------------------------------------------------------------------------------------------
# encodec_32khz: the paper's codec, through transformers
# ----------------------------------------------------------------------------------------------------------

def encodec_help(problem: str) -> str:
    """The message of every CodecUnavailable for encodec_32khz: the problem, then how to fix it."""
    return (f"{problem}\nThe paper's codec ({ENCODEC_HUB_ID}) is needed. On a machine with internet run\n"
            f"    huggingface-cli download {ENCODEC_HUB_ID} --local-dir DIR\n"
            "copy DIR here and pass --codec-weights DIR. Or use the offline codec instead: --codec spectral "
            "(fit it first with `python codec.py fit --data DATA_DIR --out FILE`).")


def hub_offline() -> bool:
    """True when the user asked for no network access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub (HF_ENDPOINT honoured), so that no network means failing at once
    rather than sitting through huggingface_hub's retry loop."""
    from urllib.parse import urlparse
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection says nothing; let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


class EncodecCodec(Codec):
    """The MusicGen 32 kHz Encodec (Sec. 3): 4 RVQ levels x 2048 bins at 50 Hz, through transformers."""

    name = "encodec_32khz"

    def __init__(self, model, source: str | None = None):
        self.model = model.eval()
        cfg = model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.hop = int(np.prod(cfg.upsampling_ratios))
        if self.sample_rate % self.hop:
            raise ValueError(f"Encodec hop {self.hop} does not divide the sample rate {self.sample_rate}")
        self.frame_rate = self.sample_rate // self.hop
        self.bandwidth = float(max(cfg.target_bandwidths))
        self.n_q = int(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))
        self.bins = int(cfg.codebook_size)
        self.source = source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "EncodecCodec":
        self.model.to(device)
        return self

    def spec(self) -> dict:
        return {"name": self.name, "weights": self.source or ENCODEC_HUB_ID,
                "sample_rate": self.sample_rate, "frame_rate": self.frame_rate, "n_q": self.n_q, "bins": self.bins}

    def _encode(self, wav):
        out = self.model.encode(wav, bandwidth=self.bandwidth, return_dict=True)
        return out.audio_codes[0]  # [chunks=1, B, Q, T] -> [B, Q, T]

    def _decode(self, tokens):
        return self.model.decode(tokens[None], [None], return_dict=True).audio_values  # [B, 1, T * hop]


def load_encodec(weights: str | None = None, device="cpu") -> EncodecCodec:
    """Load facebook/encodec_32khz from a local directory (`weights`) or the hub cache / hub.

    Raises CodecUnavailable at once when the weights are not here and cannot (or must not) be downloaded.
    """
    try:
        from transformers import EncodecModel
    except ImportError as e:  # pragma: no cover - transformers is pinned in requirements.txt
        raise CodecUnavailable(encodec_help(f"transformers is not installed ({e})")) from None
    if weights is not None:
        path = os.path.expanduser(weights)
        if os.path.isfile(path):  # a file inside a downloaded snapshot: use its folder
            path = os.path.dirname(os.path.abspath(path))
        if not os.path.isfile(os.path.join(path, "config.json")):
            what = "does not exist" if not os.path.exists(path) else "holds no config.json"
            raise CodecUnavailable(encodec_help(f"Encodec weights folder {weights} {what}."))
        sources = [(path, True)]
    else:
        # The local cache first (never touches the network); the hub only when the user allows it.
        sources = [(ENCODEC_HUB_ID, True)] + ([] if hub_offline() else [(ENCODEC_HUB_ID, False)])
    error = None
    for source, local_only in sources:
        if not local_only and not hub_reachable():
            error = ConnectionError("huggingface.co cannot be reached")
            continue
        try:
            model = EncodecModel.from_pretrained(source, local_files_only=local_only)
            break
        except Exception as e:  # OSError for missing files, requests/httpx errors for no network
            error = e
    else:
        where = (f"from {weights}" if weights is not None else
                 "from the local Hugging Face cache" + (" (HF_HUB_OFFLINE is set)" if hub_offline() else
                                                        " or the hub (no network?)"))
        raise CodecUnavailable(encodec_help(f"Cannot load {ENCODEC_HUB_ID} {where}: "
                                            f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"))
    return EncodecCodec(model, source=os.path.abspath(weights) if weights else ENCODEC_HUB_ID).to(device)


# ----------------------------------------------------------------------------------------------------------
# spectral: the offline codec (PCA of compressed STFT magnitudes, residual k-means, Griffin-Lim)
# ----------------------------------------------------------------------------------------------------------

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


class SpectralCodec(Codec):
    """Offline RVQ codec: |STFT|^power frames at 50 Hz -> PCA -> residual k-means; Griffin-Lim to decode."""

    name = "spectral"

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, codebooks: torch.Tensor, sample_rate: int = 32000,
                 frame_rate: int = 50, n_fft: int = 2048, power: float = 0.3, griffin_lim_iters: int = 32,
                 seed: int = 0, source: str | None = None):
        if sample_rate % frame_rate:
            raise ValueError(f"frame_rate {frame_rate} must divide sample_rate {sample_rate}")
        self.sample_rate, self.frame_rate = int(sample_rate), int(frame_rate)
        self.hop = self.sample_rate // self.frame_rate
        self.n_fft, self.power = int(n_fft), float(power)
        self.griffin_lim_iters, self.seed, self.source = int(griffin_lim_iters), int(seed), source
        self.mean = mean.float()            # [F] mean compressed-magnitude frame
        self.basis = basis.float()          # [D, F] orthonormal PCA directions
        self.codebooks = codebooks.float()  # [Q, K, D] residual k-means codewords
        self.n_q, self.bins = int(codebooks.shape[0]), int(codebooks.shape[1])
        if self.mean.shape[0] != self.n_fft // 2 + 1 or self.basis.shape != (codebooks.shape[2], self.mean.shape[0]):
            raise ValueError("inconsistent spectral codec arrays (mean / basis / codebooks shapes do not match)")

    @property
    def device(self) -> torch.device:
        return self.codebooks.device

    def to(self, device) -> "SpectralCodec":
        self.mean, self.basis, self.codebooks = (t.to(device) for t in (self.mean, self.basis, self.codebooks))
        return self

    def spec(self) -> dict:
        return {"name": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                "n_fft": self.n_fft, "power": self.power, "griffin_lim_iters": self.griffin_lim_iters,
                "seed": self.seed, "source": self.source or "", "mean": self.mean.cpu(),
                "basis": self.basis.cpu(), "codebooks": self.codebooks.cpu()}

    def project(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, 1, T * hop] -> PCA coordinates of the compressed magnitude frames [B, T, D]."""
        feats = compressed_magnitude(wav[:, 0], self.n_fft, self.hop, self.power)  # [B, T, F]
        return (feats - self.mean) @ self.basis.T

    def _encode(self, wav):
        z = self.project(wav)  # [B, T, D]
        B, T, D = z.shape
        return rvq_encode(z.reshape(B * T, D), self.codebooks).reshape(B, T, self.n_q).transpose(1, 2)

    def _decode(self, tokens):
        B, Q, T = tokens.shape
        z = rvq_decode(tokens.transpose(1, 2).reshape(B * T, Q), self.codebooks).reshape(B, T, -1)
        feats = (z @ self.basis + self.mean).clamp_min(0)                # [B, T, F]
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
        raise CodecUnavailable(f"spectral codec file not found: {path}\n"
                               "Fit one with `python codec.py fit --data DATA_DIR --out FILE`.")
    try:
        spec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CodecUnavailable(f"cannot read spectral codec file {path}: {e}") from None
    if not isinstance(spec, dict) or spec.get("name") != "spectral":
        raise CodecUnavailable(f"{path} is not a spectral codec file (made by `python codec.py fit`)")
    spec["source"] = spec.get("source") or path
    return spec


def load_codec(spec: dict, device="cpu", weights: str | None = None) -> Codec:
    """Rebuild a codec from `Codec.spec()` (as stored in checkpoints).

    `weights` overrides where the codec's parameters come from: the Encodec folder for encodec_32khz,
    a fitted file for a spectral spec that does not embed its arrays.
    """
    name = spec.get("name") if isinstance(spec, dict) else None
    if name == "encodec_32khz":
        w = weights or spec.get("weights")
        codec = load_encodec(None if w in (None, "", ENCODEC_HUB_ID) else w, device)
    elif name == "spectral":
        if "codebooks" not in spec:
            src = weights or spec.get("source")
            if not src:
                raise CodecUnavailable("this spectral codec spec holds no arrays and no file; pass --codec-weights")
            spec = load_spectral_file(src)
        codec = SpectralCodec(spec["mean"], spec["basis"], spec["codebooks"], spec["sample_rate"],
                              spec["frame_rate"], spec["n_fft"], spec["power"], spec["griffin_lim_iters"],
                              spec["seed"], spec.get("source") or None).to(device)
    else:
        raise ValueError(f"unknown codec spec {name!r}: expected 'encodec_32khz' or 'spectral'")
    for key in ("sample_rate", "frame_rate", "n_q", "bins"):
        if key in spec and spec[key] != getattr(codec, key):
            raise CodecUnavailable(f"codec mismatch: the spec says {key}={spec[key]} but the loaded "
                                   f"{codec.name} codec has {getattr(codec, key)}; pass the weights it was made with")
    return codec


def open_codec(name: str, weights: str | None = None, device="cpu") -> Codec:
    """The codec a user names on a command line: `--codec encodec_32khz|spectral --codec-weights PATH`."""
    if name == "encodec_32khz":
        return load_encodec(weights, device)
    if name == "spectral":
        if not weights:
            raise CodecUnavailable("--codec spectral needs the fitted file: --codec-weights FILE "
                                   "(make it with `python codec.py fit --data DATA_DIR --out FILE`)")
        return load_codec(load_spectral_file(weights), device)
    raise ValueError(f"unknown codec {name!r}: choose encodec_32khz or spectral")


# ---- fitting ------------------------------------------------------------------------------------------------

def find_tracks(data_dir: str, splits: tuple[str, ...]) -> list[list[str]]:
    """Audio files of a Slakh-layout folder grouped by track: [[stems/S00.flac, ..., mix.flac], ...].

    Tracks and their splits come from data.scan_tracks (split folders, or data.py's hash split without
    them), so the codec is fitted on the same training tracks the model sees and measured on held-out ones.
    Folders without metadata.yaml fall back to audio_files_by_track.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    tracks = []
    for split in splits:
        try:
            found, _ = data.scan_tracks(data_dir, split)
        except data.DatasetError:
            found = []
        for t in found:
            mix = [p for p in glob.glob(os.path.join(t.path, "mix.*")) if p.lower().endswith(AUDIO_EXTENSIONS)]
            tracks.append([s.path for s in t.stems] + sorted(mix)[:1])
    return tracks or audio_files_by_track(data_dir, splits)


def audio_files_by_track(data_dir: str, splits: tuple[str, ...]) -> list[list[str]]:
    """Audio files of a folder without metadata, grouped by track folder (stems/ and mix.*), else one per file."""
    present = [s for s in data.SPLITS if os.path.isdir(os.path.join(data_dir, s))]
    roots = [os.path.join(data_dir, s) for s in splits if s in present] if present else [data_dir]
    files = sorted(p for r in roots for p in glob.glob(os.path.join(r, "**", "*"), recursive=True)
                   if p.lower().endswith(AUDIO_EXTENSIONS) and os.path.isfile(p))
    tracks: dict[str, list[str]] = {}
    for p in files:
        parent = os.path.dirname(p)
        if os.path.basename(parent) == "stems":
            tracks.setdefault(os.path.dirname(parent), []).append(p)
        elif os.path.basename(p).lower().startswith("mix") and os.path.isdir(os.path.join(parent, "stems")):
            tracks.setdefault(parent, []).append(p)
        else:
            tracks.setdefault(p, []).append(p)
    if not tracks:
        where = f"the {'/'.join(splits)} split of " if present else ""
        raise FileNotFoundError(f"no .flac/.wav audio found under {where}{data_dir} "
                                "(expected TrackNNNNN/stems/SNN.flac, optionally under train/ validation/ test/)")
    return list(tracks.values())


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


def fit_spectral(data_dir: str, out_path: str | None, n_q: int = 4, bins: int = 1024, dim: int = 64,
                 sample_rate: int = 32000, frame_rate: int = 50, n_fft: int = 2048, power: float = 0.3,
                 seconds_per_track: float = 10.0, max_frames: int = 100_000, kmeans_iters: int = 20,
                 griffin_lim_iters: int = 32, seed: int = 0, progress: bool = True,
                 overwrite: bool = False) -> SpectralCodec:
    """Fit the spectral codec on a Slakh-layout dataset (train split when there are splits) and save it.

    Reads a random `seconds_per_track` window of every track (its stems, its mix and random stem sub-mixes),
    keeps at most `max_frames` STFT frames (near-silent frames mostly dropped), fits PCA to `dim` dims,
    then `n_q` levels of `bins`-way residual k-means. Writes `out_path` (if given) atomically.
    """
    if out_path and os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f"output exists: {out_path} (pass --force to overwrite)")
    if dim > n_fft // 2 + 1:
        raise ValueError(f"--dim {dim} exceeds the {n_fft // 2 + 1} STFT bins")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    hop = sample_rate // frame_rate
    tracks = find_tracks(data_dir, ("train",))
    feats, silent = [], []
    for files in tqdm(tracks, desc="reading tracks", disable=not progress):
        for x in training_signals(read_track_crop(files, sample_rate, seconds_per_track, rng), rng):
            wav = pad_to_frames(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None], hop)
            f = compressed_magnitude(wav[:, 0], n_fft, hop, power)[0]  # [T, F]
            loud = f.mean(1) > 1e-3 ** power  # frames above about -60 dB
            feats.append(f[loud])
            silent.append(f[~loud])
    feats = torch.cat(feats) if feats else torch.zeros(0, n_fft // 2 + 1)
    if feats.shape[0] < bins:
        raise ValueError(f"{data_dir}: only {feats.shape[0]} non-silent frames found; the codec needs at "
                         f"least {bins} (more or longer tracks, or fewer --bins)")
    silent = torch.cat(silent)
    n_silent = min(len(silent), max(1, feats.shape[0] // 50))  # a few silent frames so silence has a code
    feats = torch.cat([feats, silent[torch.randperm(len(silent), generator=generator)[:n_silent]]])
    if feats.shape[0] > max_frames:
        feats = feats[torch.randperm(feats.shape[0], generator=generator)[:max_frames]]
    mean, basis = fit_pca(feats, dim)
    codebooks = fit_rvq((feats - mean) @ basis.T, n_q, bins, kmeans_iters, generator, progress)
    codec = SpectralCodec(mean, basis, codebooks, sample_rate, frame_rate, n_fft, power, griffin_lim_iters,
                          seed, source=os.path.abspath(out_path) if out_path else None)
    if out_path:
        save_spectral(codec, out_path, overwrite)
    return codec


# ---- measuring ----------------------------------------------------------------------------------------------

def spectral_convergence(ref: np.ndarray, est: np.ndarray, n_fft: int = 2048, hop: int = 512) -> float:
    """|| |STFT(ref)| - |STFT(est)| ||_F / || |STFT(ref)| ||_F (0 is perfect)."""
    a, b = (stft(torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[None], n_fft, hop).abs()
            for s in (ref, est))
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def chroma_similarity(ref: np.ndarray, est: np.ndarray, sample_rate: int, n_fft: int = 4096,
                      hop: int = 1024) -> tuple[float, float]:
    """Frame-wise chroma agreement over the frames where `ref` sounds: (mean cosine, mean Pearson correlation)."""
    import librosa  # only the measuring code needs it

    fb = torch.from_numpy(librosa.filters.chroma(sr=sample_rate, n_fft=n_fft)).float()  # [12, F]
    a, b = (fb @ stft(torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[None], n_fft, hop)[0]
            .abs().pow(2).T for s in (ref, est))  # [12, T]
    energy = a.sum(0)
    active = energy > 1e-4 * energy.max()
    if not bool(active.any()):
        raise ValueError("the reference is silent: chroma similarity is undefined")
    a, b = a[:, active], b[:, active]
    cosine = F.cosine_similarity(a, b, dim=0, eps=1e-12)
    corr = F.cosine_similarity(a - a.mean(0), b - b.mean(0), dim=0, eps=1e-12)
    return float(cosine.mean()), float(corr.mean())


def measure(codec: Codec, data_dir: str, seconds: float = 20.0, max_files: int | None = None, seed: int = 0,
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


# ---- command line -------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the offline spectral codec on a Slakh-layout dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--data", required=True, help="dataset folder (TrackNNNNN/stems/SNN.flac|wav; train/ split "
                   "used when present)")
    f.add_argument("--out", required=True, help="file to write the fitted codec to (.pt)")
    f.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    f.add_argument("--n-q", type=int, default=4, help="RVQ levels (the paper's Encodec has 4)")
    f.add_argument("--bins", type=int, default=1024, help="codewords per level")
    f.add_argument("--dim", type=int, default=64, help="PCA dimensions")
    f.add_argument("--sample-rate", type=int, default=32000, help="codec sample rate (Hz)")
    f.add_argument("--n-fft", type=int, default=2048, help="STFT size")
    f.add_argument("--power", type=float, default=0.3, help="magnitude compression exponent")
    f.add_argument("--seconds-per-track", type=float, default=10.0, help="audio read per track")
    f.add_argument("--max-frames", type=int, default=100_000, help="frames kept for fitting")
    f.add_argument("--kmeans-iters", type=int, default=20, help="Lloyd iterations per level")
    f.add_argument("--griffin-lim-iters", type=int, default=32,
                   help="phase-recovery iterations when decoding (64 or 128 change spectral convergence by < 0.01)")
    f.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("measure", help="round-trip quality of a codec on held-out audio",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--codec", required=True, help="fitted spectral codec file, or encodec_32khz")
    m.add_argument("--codec-weights", default=None, help="local facebook/encodec_32khz folder (encodec_32khz)")
    m.add_argument("--data", required=True, help="dataset folder (test/ split used when present)")
    m.add_argument("--seconds", type=float, default=20.0, help="audio per file (from its start)")
    m.add_argument("--max-files", type=int, default=None, help="measure a random subset of this many files")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        if args.command == "fit":
            t0 = time.perf_counter()
            codec = fit_spectral(args.data, args.out, args.n_q, args.bins, args.dim, args.sample_rate, 50,
                                 args.n_fft, args.power, args.seconds_per_track, args.max_frames, args.kmeans_iters,
                                 args.griffin_lim_iters, args.seed, overwrite=args.force)
            print(f"wrote {args.out}: spectral codec {codec.n_q} x {codec.bins} bins, PCA {args.dim}, "
                  f"{codec.sample_rate} Hz, {codec.frame_rate} Hz frames ({time.perf_counter() - t0:.0f} s)")
        else:
            if args.codec == "encodec_32khz":
                codec = load_encodec(args.codec_weights, args.device)
            else:
                codec = load_codec(load_spectral_file(args.codec), args.device)
            rows = measure(codec, args.data, args.seconds, args.max_files, args.seed)
            print(f"{'file':40s} {'SC':>6s} {'chroma cos':>10s} {'chroma corr':>11s} {'time s':>7s}")
            for r in rows:
                print(f"{r['file'][-40:]:40s} {r['spectral_convergence']:6.3f} {r['chroma_cosine']:10.3f} "
                      f"{r['chroma_correlation']:11.3f} {r['round_trip_s']:7.2f}")
            mean = {k: float(np.mean([r[k] for r in rows])) for k in
                    ("spectral_convergence", "chroma_cosine", "chroma_correlation")}
            print(f"{'mean of ' + str(len(rows)) + ' files':40s} {mean['spectral_convergence']:6.3f} "
                  f"{mean['chroma_cosine']:10.3f} {mean['chroma_correlation']:11.3f}")
    except (CodecUnavailable, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
