"""Performance accounting for the benchmarks (bench.py): timing on a device, the device's name and peak
throughput, and the model FLOPs of a training step or a forward pass.

Model FLOPs utilisation (MFU) counts 6 x parameters x tokens plus the attention matmuls for training, against
the device's dense bf16 peak (a table for NVIDIA data-centre GPUs; elsewhere measured with one large matmul,
labelled "measured").
"""
from __future__ import annotations

import os
import platform
import time

import torch

from model import count_parameters

# Dense bf16 peak (TFLOP/s) from the vendors' datasheets.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def sync(device):
    """Wait for the device's queued work, so that a timer reads the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed_once(fn, device) -> float:
    """Seconds of one call of fn after one untimed warm-up call."""
    fn()
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def peak_tflops(device, dtype) -> tuple[float, str]:
    """The device's peak matmul throughput: a datasheet value on known GPUs, else measured."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in PEAK_TFLOPS.items():
            if key in name:
                return val, f"datasheet dense bf16 ({name})"
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    sync(device)
    reps = 3 if device.type == "cpu" else 20
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12, f"measured {n}x{n} {dtype} matmul"


def train_flops_per_step(model, B: int, T: int) -> float:
    """6 N per sequence element (forward + backward) for the weights used, plus attention.

    Embedding lookups are free; training applies one output head per example (its trained level).
    """
    cfg = model.cfg
    n_embed = sum(p.numel() for name, p in model.named_parameters() if "embed" in name)
    n = count_parameters(model) - n_embed - (cfg.n_q - 1) * cfg.dim * cfg.bins
    attn = 12 * cfg.n_layers * cfg.dim * T      # QK^T and AV, forward + backward, per element
    return (6 * n + attn) * B * T


def forward_flops(model, B: int, T: int, level: bool = True) -> float:
    cfg = model.cfg
    n_embed = sum(p.numel() for name, p in model.named_parameters() if "embed" in name)
    n_head = cfg.dim * cfg.bins * cfg.n_q
    n = count_parameters(model) - n_embed - (n_head * (cfg.n_q - 1) // cfg.n_q if level else 0)
    return (2 * n + 4 * cfg.n_layers * cfg.dim * T) * B * T


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else f"{platform.processor() or platform.machine()} CPU"
