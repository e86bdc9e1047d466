"""The audio tokenizer (Sec. 2.1, Sec. 3): one small interface and the paper's 32 kHz Encodec.

Both channels of StemGen (context mix and target stem) are sequences of residual-vector-quantized tokens
`[B, Q, T]` at 50 Hz. The paper uses the public MusicGen Encodec (32 kHz, 4 levels x 2048 bins, Sec. 3):
`encodec_32khz`, transformers' `EncodecModel` from `facebook/encodec_32khz` (hub or a local copy). It needs
a download, so an offline codec with the same interface is offered too: `spectral` (below; its signal processing
in spectral/dsp.py), fitted on the user's own data (`python -m spectral.fit`). This file builds either from a name
(`open_codec`) or from the spec a checkpoint stores (`load_codec`); `python bench.py codec` measures a codec's round-trip quality (roundtrip.py).
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from audio.files import atomic_write, check_finite, resample, to_mono
from spectral.dsp import (FIT_HINT, SpectralConfig, compressed_magnitude, griffin_lim, rvq_decode, rvq_encode,
                          transpose_frames)

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

    def codewords(self) -> torch.Tensor:
        """[n_q, bins, D] the codeword vectors; a frame's latent is about the sum of its tokens' codewords."""
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
        return self._tokens(wav, self._encode)

    @torch.no_grad()
    def encode_transposed(self, wav: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
        """Tokenize audio with each frame moved in pitch by semitones [B, ceil(S / hop)] and its timing kept: the
        harmony term's negative (masking.harmony_plan; ours, not the paper's). Only a codec whose frames are
        magnitude spectra can do this without resynthesis; the others say so."""
        def moved(wav):
            if tuple(semitones.shape) != (wav.shape[0], wav.shape[-1] // self.hop):
                raise ValueError(f"semitones must be [B, frames] = {[wav.shape[0], wav.shape[-1] // self.hop]}, "
                                 f"got {list(semitones.shape)}")
            return self._encode_transposed(wav, semitones.to(self.device))
        return self._tokens(wav, moved)

    def _tokens(self, wav: torch.Tensor, encode) -> torch.Tensor:
        """Check the input, pad it to whole frames, encode it with `encode` and check the tokens' shape."""
        check_wav(wav)
        wav = pad_to_frames(wav.to(self.device, torch.float32), self.hop)  # [B, 1, T * hop]
        tokens = encode(wav).long()
        expected = (wav.shape[0], self.n_q, wav.shape[-1] // self.hop)
        if tuple(tokens.shape) != expected:
            raise RuntimeError(f"{self.name} produced tokens {list(tokens.shape)}, expected {list(expected)}")
        return tokens

    def _encode_transposed(self, wav: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"the harmony term (--harmony-weight) moves the context's frames in pitch inside the codec's magnitude "
            f"spectra, which the {self.name} codec does not have; train it with --codec spectral")

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
    """The message of every CodecUnavailable for encodec_32khz: the problem, then how to fix it (open_encodec's
    factories add the offline alternative, the spectral codec)."""
    return (f"{problem}\nThe paper's codec ({ENCODEC_HUB_ID}) is needed. On a machine with internet run\n"
            f"    huggingface-cli download {ENCODEC_HUB_ID} --local-dir DIR\n"
            "copy DIR here and pass --codec-weights DIR.")


def hub_offline() -> bool:
    """True when the user asked for no network access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub (HF_ENDPOINT honoured), so that no network means failing at once
    rather than sitting through huggingface_hub's retry loop."""
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

    def codewords(self) -> torch.Tensor:
        return torch.stack([layer.codebook.embed for layer in self.model.quantizer.layers[:self.n_q]])

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
# The offline spectral codec (ours; its signal processing is spectral/dsp.py, its fitting spectral/fit.py)
# ----------------------------------------------------------------------------------------------------------

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

    def project(self, wav: torch.Tensor, semitones: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 1, T * hop] -> PCA coordinates of the weighted compressed magnitude frames [B, T, D]; with
        semitones [B, T], each frame moved in pitch first (dsp.transpose_frames)."""
        feats = compressed_magnitude(wav[:, 0], self.n_fft, self.hop, self.power)  # [B, T, F]
        if semitones is not None:
            feats = transpose_frames(feats, semitones)
        return ((feats - self.mean) * self.weight) @ self.basis.T

    def _quantize(self, z: torch.Tensor) -> torch.Tensor:
        B, T, D = z.shape
        return rvq_encode(z.reshape(B * T, D), self.codebooks).reshape(B, T, self.n_q).transpose(1, 2)

    def _encode(self, wav):
        return self._quantize(self.project(wav))

    def _encode_transposed(self, wav, semitones):
        return self._quantize(self.project(wav, semitones))

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


# ----------------------------------------------------------------------------------------------------------
# A codec from a name or from a checkpoint's spec: the one place that knows every codec
# ----------------------------------------------------------------------------------------------------------

OFFLINE_CODEC_HINT = f"Or use the offline codec instead: --codec spectral (fit it first with `{FIT_HINT}`)."


def open_encodec(weights: str | None = None, device="cpu") -> Codec:
    """codec.load_encodec, its CodecUnavailable message ending with the offline alternative."""
    try:
        return load_encodec(weights, device)
    except CodecUnavailable as e:
        raise CodecUnavailable(f"{e} {OFFLINE_CODEC_HINT}") from None


def load_codec(spec: dict, device="cpu", weights: str | None = None) -> Codec:
    """Rebuild a codec from `Codec.spec()` (as stored in checkpoints).

    `weights` overrides where the codec's parameters come from: the Encodec folder for encodec_32khz,
    a fitted file for a spectral spec that does not embed its arrays.
    """
    name = spec.get("name") if isinstance(spec, dict) else None
    if name == "encodec_32khz":
        w = weights or spec.get("weights")
        codec = open_encodec(None if w in (None, "", ENCODEC_HUB_ID) else w, device)
    elif name == "spectral":
        codec = spectral_from_spec(spec, device, weights)
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
        return open_encodec(weights, device)
    if name == "spectral":
        if not weights:
            raise CodecUnavailable(f"--codec spectral needs the fitted file: --codec-weights FILE "
                                   f"(make it with `{FIT_HINT}`)")
        return spectral_from_spec(load_spectral_file(weights), device)
    raise ValueError(f"unknown codec {name!r}: choose encodec_32khz or spectral")
