"""The StemGen network (Sec. 2.1, Fig. 2-3, Sec. 3 of the paper).

Each sequence element holds two audio channels, the context-mix and the target-stem. Per channel, the
embeddings of the Q token levels are summed (Fig. 3); the instrument embedding is summed into each channel;
the two channel embeddings are concatenated along the feature dimension and fed to a bidirectional
LLaMA-type transformer (RMSNorm, rotary positions, SwiGLU, no biases). One linear head per level predicts
the target tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F



@dataclass
class ModelConfig:
    n_q: int = 4              # RVQ levels of the codec (Encodec 32 kHz: 4)
    bins: int = 2048          # tokens per level (Encodec 32 kHz: 2048); the target tables add MASK = bins
    n_instruments: int = 18  # 17 Slakh classes + the null entry (Sec. 3, "18 entries"; audio.instruments, tested)
    dim: int = 1024           # transformer width = 2 x channel width (the two channels are concatenated)
    n_heads: int = 16
    n_layers: int = 20
    ffn_multiple: int = 256   # SwiGLU hidden size rounded up to a multiple of this (as LLaMA)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    max_len: int = 4096       # longest sequence the rotary table is built for (20 s at 50 Hz = 1000)

    @property
    def channel_dim(self) -> int:
        return self.dim // 2

    @property
    def mask_id(self) -> int:
        return self.bins

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # Sec. 3: embedding dimension 1024, 16 heads, 20 layers, ~250 M parameters, Encodec 4 x 2048.
    "paper": ModelConfig(),
    # Trains on a CPU in tens of minutes; sized for the offline spectral codec (4 x 1024).
    "small": ModelConfig(bins=1024, dim=256, n_heads=4, n_layers=6),
    # The CPU demo and the tests.
    "tiny": ModelConfig(bins=1024, dim=128, n_heads=4, n_layers=4),
}


class RMSNorm(nn.Module):
    """Root-mean-square layer norm without bias (LLaMA)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rotary_table(head_dim: int, max_len: int, base: float) -> torch.Tensor:
    """Rotary position angles as a [max_len, head_dim/2] complex table (RoFormer / LLaMA)."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_len).float(), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate query/key pairs by their position: x [B, H, T, D], rot [T, D/2] complex."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention (no causal mask: every element sees the whole sequence)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, rot):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, rot), apply_rotary(k, rot)  # [B, H, T, D]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    """Gated feed-forward block: W2(silu(W1 x) * W3 x) (LLaMA)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(2 * 4 * cfg.dim / 3)
        hidden = cfg.ffn_multiple * math.ceil(hidden / cfg.ffn_multiple)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x, rot):
        x = x + self.attn(self.attn_norm(x), rot)
        return x + self.ffn(self.ffn_norm(x))


class LevelEmbedding(nn.Module):
    """One audio channel: the sum of one embedding table per RVQ level (Fig. 3, codebooks E_1..Q)."""

    def __init__(self, n_q: int, vocab: int, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(vocab, dim) for _ in range(n_q))

    def forward(self, tokens):  # [B, Q, T] -> [B, T, dim]
        return sum(table(tokens[:, q]) for q, table in enumerate(self.tables))


class StemGen(nn.Module):
    """Non-autoregressive masked token model over (context-mix, target-stem) pairs (Sec. 2.1)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.dim % 2 or cfg.dim % cfg.n_heads or (cfg.dim // cfg.n_heads) % 2:
            raise ValueError("dim must be even and divisible by n_heads, with an even head size")
        self.cfg = cfg
        ch = cfg.channel_dim
        self.context_embed = LevelEmbedding(cfg.n_q, cfg.bins, ch)
        self.target_embed = LevelEmbedding(cfg.n_q, cfg.bins + 1, ch)  # + MASK
        self.instrument_embed = nn.Embedding(cfg.n_instruments, ch)
        # A dropped context (classifier-free guidance, Sec. 2.1.2) is replaced by this learned vector.
        self.null_context = nn.Parameter(torch.zeros(ch))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.bins, bias=False) for _ in range(cfg.n_q))
        self.register_buffer("rot", rotary_table(cfg.dim // cfg.n_heads, cfg.max_len, cfg.rope_base),
                             persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    @torch.no_grad()
    def init_from_codewords(self, codewords: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Start both channels' level embeddings from the codec's codewords [Q, bins, D] (ours, not the paper's).

        Every table row becomes its codeword through one fixed random orthogonal projection to the channel
        width, scaled to the default init's size; a frame's summed level embedding (Fig. 3) then starts as a
        projection of its latent vector, so the model starts out knowing which tokens sound alike.
        """
        Q, K, D = codewords.shape
        if (Q, K) != (self.cfg.n_q, self.cfg.bins):
            raise ValueError(f"codewords {Q} x {K} do not fit the model's {self.cfg.n_q} x {self.cfg.bins} tokens")
        n = max(D, self.cfg.channel_dim)
        proj = torch.linalg.qr(torch.randn(n, n, generator=generator))[0][:D, :self.cfg.channel_dim]   # [D, ch]
        rows = codewords.detach().float().cpu() @ proj                                                  # [Q, K, ch]
        rows = rows * (0.02 / rows.std())
        for q in range(Q):
            self.context_embed.tables[q].weight.copy_(rows[q])
            self.target_embed.tables[q].weight[:K].copy_(rows[q])

    def embed(self, context, target, instrument, context_dropped=None):
        """Fig. 3: per-channel level sums, instrument summed into each channel, channels concatenated."""
        ctx = self.context_embed(context)                       # [B, T, ch]
        if context_dropped is not None:
            ctx = torch.where(context_dropped[:, None, None], self.null_context.to(ctx.dtype), ctx)
        tgt = self.target_embed(target)                          # [B, T, ch]
        inst = self.instrument_embed(instrument)[:, None, :]     # [B, 1, ch]
        return torch.cat([ctx + inst, tgt + inst], dim=-1)       # [B, T, dim]

    def forward(self, context, target, instrument, context_dropped=None, level: int | torch.Tensor | None = None):
        """Logits for every target level and position (or for one level, when decoding).

        Args:
            context: LongTensor [B, Q, T], context-mix tokens (never masked).
            target: LongTensor [B, Q, T], target-stem tokens, MASK (= bins) where unknown.
            instrument: LongTensor [B], instrument class ids; the null id drops the instrument condition.
            context_dropped: optional BoolTensor [B]; True replaces the context with the null context.
            level: if given, only one head is applied: an int (that level for every example, as in
                decoding) or a LongTensor [B] (each example's own level, as in training, where the loss
                is taken at one level per example).
        Returns:
            logits FloatTensor [B, Q, T, bins], or [B, T, bins] when `level` is given.
        """
        x = self.trunk(context, target, instrument, context_dropped)   # [B, T, dim]
        if isinstance(level, int):
            return self.heads[level](x)                                  # [B, T, bins]
        if level is not None:
            w = torch.stack([head.weight for head in self.heads])[level]  # [B, bins, dim]
            return torch.bmm(x, w.transpose(1, 2))                       # [B, T, bins]
        return torch.stack([head(x) for head in self.heads], dim=1)  # [B, Q, T, bins]

    def trunk(self, context, target, instrument, context_dropped=None):
        """Embedding and transformer: the final normalised hidden states [B, T, dim]."""
        T = context.shape[-1]
        if T > self.cfg.max_len:
            raise ValueError(f"sequence of {T} frames is longer than max_len={self.cfg.max_len}")
        x = self.embed(context, target, instrument, context_dropped)
        rot = self.rot[:T]
        for block in self.blocks:
            x = block(x, rot)
        return self.norm(x)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device="cpu") -> "StemGen":
        model = cls(ModelConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        return model.to(device).eval()


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fused attention, tensor cores), a no-op on the CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
