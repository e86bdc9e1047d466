"""Benchmarks (not tests): training throughput, generation latency, data loading, a codec's round trip.

    python bench.py train --preset paper --batch 16 --crop-seconds 20      # tokens/s, MFU, peak memory
    python bench.py generate --preset paper --seconds 20                   # time per 20 s stem, RTF
    python bench.py generate --preset tiny --seconds 5 --threads 1         # the demo's 5 s windows on a CPU
    python bench.py data --data slakh/ --workers 4                        # training items/s, activity map build/load
    python bench.py codec --codec FILE|encodec_32khz --data DIR           # round-trip quality (roundtrip.py)

`generate` also times a 3-minute context (--context-seconds) in overlapping windows, each taking steps in
proportion to the frames it adds (decode.steps_for): forward passes and seconds per second of audio.

Random weights are used for timing (it does not depend on them); every figure is printed with the device,
dtype and settings it was measured with. Timing, peaks and model FLOPs utilisation (MFU) are counted in
metrics/speed.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace

import torch

import decode
from training import pool
from metrics import roundtrip
from cli.common import USER_ERROR, DefaultsHelp, pick_device
from codec import ENCODEC_32KHZ_CONFIG, CodecUnavailable, EncodecCodec, SpectralCodec, open_codec
from data import CROP_SECONDS, PairDraw, StemPairDataset
from guidance import BRANCHES
from audio.instruments import NULL_INSTRUMENT
from masking import Objective, masked_loss
from model import PRESETS, StemGen, autocast, count_parameters
from metrics.speed import device_name, forward_flops, peak_tflops, sync, timed_once, train_flops_per_step
from spectral.dsp import SpectralConfig

FRAME_RATE = SpectralConfig.frame_rate  # token frames per second; Encodec 32 kHz's strides give the same 50 Hz


def build(args, device):
    cfg = replace(PRESETS[args.preset], max_len=max(PRESETS[args.preset].max_len, 4096))
    model = StemGen(cfg).to(device)
    return model, cfg


def make_codec(args, device):
    """The codec whose encode/decode cost is measured, with random parameters (timing does not need weights)."""
    if args.codec == "encodec_32khz":
        return open_codec("encodec_32khz", args.codec_weights, device), "encodec_32khz, trained weights"
    if args.codec == "encodec_random":
        from transformers import EncodecConfig, EncodecModel    # as codec.load_encodec: only Encodec needs it
        model = EncodecModel(EncodecConfig(**ENCODEC_32KHZ_CONFIG))
        for layer in model.quantizer.layers:      # the init leaves the codebooks at zero: every token would be 0
            layer.codebook.embed.normal_()
        return EncodecCodec(model).to(device), "encodec_32khz architecture, random weights"
    g, c = torch.Generator().manual_seed(0), SpectralConfig()
    n_freq = c.n_fft // 2 + 1
    basis = torch.linalg.qr(torch.randn(n_freq, c.dim, generator=g))[0].T.contiguous()   # [D, F] orthonormal
    spectral = SpectralCodec(torch.rand(n_freq, generator=g), basis,
                             torch.randn(c.n_q, c.bins, c.dim, generator=g) * 0.1)
    return spectral.to(device), (f"spectral {c.n_q} x {c.bins}, random codebooks, {spectral.griffin_lim_iters} "
                                 "Griffin-Lim iterations")


def bench_train(args):
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, cfg = build(args, device)
    T = math.ceil(args.crop_seconds * FRAME_RATE)
    B = args.batch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model) if args.compile else model
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randint(0, cfg.bins, (B, cfg.n_q, T), device=device, generator=g)
    tgt = torch.randint(0, cfg.bins, (B, cfg.n_q, T), device=device, generator=g)
    inst = torch.randint(0, NULL_INSTRUMENT, (B,), device=device, generator=g)   # the 17 classes

    def step():
        with autocast(device):
            loss = masked_loss(fwd, ctx, tgt, inst, Objective(), NULL_INSTRUMENT, g)   # the paper's objective
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t) / args.steps
    peak, peak_src = peak_tflops(device, dtype)
    flops = train_flops_per_step(model, B, T)
    out = {
        "bench": "train", "device": str(device), "device_name": device_name(device), "dtype": str(dtype),
        "preset": args.preset, "params_M": round(count_parameters(model) / 1e6, 1), "batch": B, "frames": T,
        "crop_seconds": args.crop_seconds, "compile": args.compile, "step_s": round(dt, 4),
        "steps_per_s": round(1 / dt, 3), "tokens_per_s": round(B * T * cfg.n_q / dt),
        "model_tflops": round(flops / dt / 1e12, 2), "peak_tflops": round(peak, 1), "peak_source": peak_src,
        "mfu": round(flops / dt / 1e12 / peak, 3),
        "peak_mem_GB": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None,
    }
    if args.codec != "none":
        codec, what = make_codec(args, device)
        out.update(codec=what, **tokenize_shares(codec, B, args.crop_seconds, dt, device))
    return out


def tokenize_shares(codec, B: int, crop_seconds: float, step_s: float, device) -> dict:
    """Time to tokenize a batch's contexts and targets, and their share of a step (model step + tokenizing):
    fresh, with every target's tokens found in a pool.TokenCache, and (CUDA) under bf16 autocast, with the
    agreement of bf16 and fp32 tokens per level (on noise; use --codec encodec_32khz for the trained codec)."""
    g = torch.Generator(device=device).manual_seed(1)
    context, target = (torch.randn(B, int(crop_seconds * codec.sample_rate), device=device, generator=g) * 0.1
                       for _ in range(2))
    ctx_s = timed_once(lambda: pool.tokenize(codec, context), device)
    tgt_s = timed_once(lambda: pool.tokenize(codec, target), device)
    cache, keys = pool.TokenCache(2**40), [f"bench-target-{i}" for i in range(B)]
    cache.tokens(codec, target, keys)                                # fill it: every later lookup hits
    cached_s = timed_once(lambda: cache.tokens(codec, target, keys), device)
    out = {"tokenize_s": round(ctx_s + tgt_s, 4), "tokenize_context_s": round(ctx_s, 4),
           "tokenize_target_s": round(tgt_s, 4), "tokenize_target_cached_s": round(cached_s, 5),
           "tokenize_fraction": round((ctx_s + tgt_s) / (ctx_s + tgt_s + step_s), 3),
           "tokenize_fraction_context": round(ctx_s / (ctx_s + tgt_s + step_s), 3),
           "tokenize_fraction_target": round(tgt_s / (ctx_s + tgt_s + step_s), 3),
           "tokenize_fraction_all_targets_cached": round((ctx_s + cached_s) / (ctx_s + cached_s + step_s), 3)}
    if device.type != "cuda":
        out["bf16_encode"] = "not measured: bf16 encode timing and agreement need a CUDA device"
        return out
    bf_s = timed_once(lambda: (pool.tokenize(codec, context, "bf16"), pool.tokenize(codec, target, "bf16")), device)
    out.update(tokenize_bf16_s=round(bf_s, 4), tokenize_fraction_bf16=round(bf_s / (bf_s + step_s), 3),
               bf16_agreement_per_level=[round(a, 4) for a in pool.token_agreement(codec, context)])
    return out


def forward_passes(n_free: int, level_steps: tuple[int, ...]) -> int:
    """Forward passes of one decode.generate_tokens call decoding n_free frames: its steps that fix a token
    (a step whose schedule fixes nothing is skipped)."""
    n = 0
    for s in level_steps:
        left = [n_free] + decode.cosine_schedule(n_free, s)
        n += sum(a > b for a, b in zip(left, left[1:]))
    return n


def plan_passes(plan: list[tuple[int, int, int]], sampling: decode.Sampling) -> int:
    """Forward passes of decode.generate_stem_tokens over a window plan (decode.plan_windows)."""
    return sum(forward_passes(end - start - p, sampling.level_steps(end - start - p)) for start, end, p in plan)


class PassCounter(torch.nn.Module):
    """The model, counting its forward passes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg, self.passes = model, model.cfg, 0

    def forward(self, *args, **kwargs):
        self.passes += 1
        return self.model(*args, **kwargs)


def seconds_per_pass(fwd, ctx, sampling, window: int, overlap: int, measured: int, device) -> float:
    """Seconds per forward pass of generate_stem_tokens over the first `measured` windows of context tokens
    ctx [1, Q, T] (0: all of them), decoding steps and sampling included."""
    plan = decode.plan_windows(ctx.shape[-1], window, overlap)
    measured = len(plan) if measured <= 0 else min(measured, len(plan))
    counter, g = PassCounter(fwd), torch.Generator(device=device).manual_seed(0)
    sync(device)
    t = time.perf_counter()
    decode.generate_stem_tokens(counter, ctx[..., :plan[measured - 1][1]], 0, sampling, window, overlap, generator=g)
    sync(device)
    assert counter.passes == plan_passes(plan[:measured], sampling)   # exactly those windows ran
    return (time.perf_counter() - t) / counter.passes


def long_context(fwd, cfg, sampling, window_seconds: float, context_seconds: float, measured: int,
                 rounds: int, device) -> dict:
    """Forward passes and decoding seconds per second of audio (passes x seconds per pass; every pass has the
    window's shape, the least of `rounds` measurements of the first `measured` windows), for one window and for a
    context of context_seconds in half-window overlaps."""
    window, overlap = decode.window_frames(FRAME_RATE, cfg.max_len, window_seconds)
    g = torch.Generator(device=device).manual_seed(1)
    out = {"window_frames": window, "overlap_frames": overlap}
    for name, seconds in [("window", window / FRAME_RATE), ("context", context_seconds)]:
        ctx = torch.randint(0, cfg.bins, (1, cfg.n_q, math.ceil(seconds * FRAME_RATE)), device=device, generator=g)
        plan = decode.plan_windows(ctx.shape[-1], window, overlap)
        per_pass = min(seconds_per_pass(fwd, ctx, sampling, window, overlap, measured, device) for _ in range(rounds))
        passes = plan_passes(plan, sampling)
        if name == "context":
            out.update(context_seconds=seconds, context_windows=len(plan),
                       context_measured_windows=min(measured or len(plan), len(plan)))
        out.update({f"{name}_passes": passes, f"{name}_s_per_audio_s": round(passes * per_pass / seconds, 4)})
    return out


def bench_generate(args):
    device = pick_device(args.device)
    model, cfg = build(args, device)
    model.eval()
    fwd = torch.compile(model, mode="reduce-overhead") if args.compile else model   # CUDA graphs
    T = math.ceil(args.seconds * FRAME_RATE)
    steps = tuple(args.steps[: cfg.n_q])
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.randint(0, cfg.bins, (1, cfg.n_q, T), device=device, generator=g)
    inst = torch.tensor([0], device=device)
    sampling = decode.Sampling(steps=steps, guidance=args.guidance)
    if args.compile:  # warm the compiled graph up
        decode.generate_tokens(fwd, ctx, inst, replace(sampling, steps=(2,) * cfg.n_q), generator=g)
    sync(device)
    t = time.perf_counter()
    tokens = decode.generate_tokens(fwd, ctx, inst, sampling, generator=g)
    sync(device)
    total = time.perf_counter() - t
    # the same forward passes alone (fixed shapes, as in the loop) give the model's share of the time
    n_branches = len(BRANCHES[args.guidance])
    n_passes = forward_passes(T, sampling.level_steps(T))
    tgt = torch.full_like(ctx, cfg.mask_id).repeat(n_branches, 1, 1)
    c3 = ctx.repeat(n_branches, 1, 1)
    i3 = inst.repeat(n_branches)
    d3 = torch.zeros(n_branches, dtype=torch.bool, device=device)
    sync(device)
    t = time.perf_counter()
    with torch.no_grad(), autocast(device):
        for _ in range(n_passes):
            fwd(c3, tgt, i3, d3, level=0)
    sync(device)
    fwd_time = time.perf_counter() - t
    out = {"bench": "generate", "device": str(device), "device_name": device_name(device),
           "dtype": "bf16 autocast" if device.type == "cuda" else "float32", "preset": args.preset,
           "seconds": args.seconds, "frames": T, "steps": list(steps),
           "steps_run": list(sampling.level_steps(T)), "guidance": args.guidance,
           "branches": n_branches, "compile": args.compile, "forward_passes": n_passes,
           "decode_tokens_s": round(total, 3), "forward_s": round(fwd_time, 3),
           "outside_forward_fraction": round(max(total - fwd_time, 0) / total, 3),
           "forward_tflops": round(forward_flops(model, n_branches, T) * n_passes / fwd_time / 1e12, 1)}
    if args.codec != "none":
        codec, what = make_codec(args, device)
        toks = torch.randint(0, codec.bins, (1, codec.n_q, T), device=device)
        dec = timed_once(lambda: codec.decode(toks), device)
        out.update(codec=what, codec_decode_s=round(dec, 3))
        total += dec
    out.update(total_s=round(total, 3), real_time_factor=round(total / args.seconds, 3))
    del tokens
    if args.context_seconds > 0:
        out.update(long_context(fwd, cfg, sampling, args.seconds, args.context_seconds,
                                args.measured_windows, args.rounds, device))
    return out


def items_per_second(ds, items: int, first: int, batch: int, workers: int) -> float:
    """Items [first, first + items) of a seeded dataset through a DataLoader, per second (worker start included)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                         sampler=range(first, first + items))
    t = time.perf_counter()
    n = sum(len(b[2]) for b in loader)
    return n / (time.perf_counter() - t)


def bench_data(args):
    """Training items per second (activity maps: only the chosen stems read), round by round on fresh item
    indices, and the time to scan the folder and build, then load, its activity maps.

    The activity cache goes to a temporary folder unless --cache-dir is given, so that the map's build time is
    measured and the data folder is not written.
    """
    if args.cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="stemgen-bench-cache-") as tmp:   # removed afterwards
            return bench_data(argparse.Namespace(**{**vars(args), "cache_dir": tmp}))
    kw = dict(split=args.split, draw=PairDraw(args.sample_rate, args.crop_seconds), seed=0, length=10**9,
              verbose=False, cache_dir=args.cache_dir)
    t = time.perf_counter()
    StemPairDataset(**kw, root=args.data)
    build = time.perf_counter() - t
    t = time.perf_counter()
    ds = StemPairDataset(**kw, root=args.data)
    load = time.perf_counter() - t
    rates = [items_per_second(ds, args.items, r * args.items, args.batch, args.workers) for r in range(args.rounds)]
    n_stems = [len(t.stems) for t in ds.tracks]
    return {"bench": "data", "data": args.data, "split": args.split, "tracks": len(ds.tracks),
            "stems_per_track": round(sum(n_stems) / len(n_stems), 1), "crop_seconds": args.crop_seconds,
            "sample_rate": args.sample_rate, "workers": args.workers, "batch": args.batch, "items": args.items,
            "rounds": args.rounds, "cpu": device_name(torch.device("cpu")),
            "scan_and_map_build_s": round(build, 2), "scan_and_cached_map_s": round(load, 2),
            "items_per_s": [round(x, 2) for x in rates]}


def bench_codec(args) -> dict:
    """A codec's round-trip quality on the held-out files of --data (roundtrip.measure): one row per file."""
    device = pick_device(args.device)
    if args.codec == "encodec_32khz":
        codec = open_codec("encodec_32khz", args.codec_weights, device)
    else:
        codec = open_codec("spectral", args.codec, device)
    rows = roundtrip.measure(codec, args.data, args.seconds, args.max_files, args.seed)
    return {"bench": "codec", "codec": codec.name, "source": args.codec, "device": str(device), "data": args.data,
            "seconds": args.seconds, "files": len(rows), **{f"mean_{k}": v for k, v in roundtrip.means(rows).items()},
            "rows": rows}


def common_arguments(s: argparse.ArgumentParser, device: bool = True) -> None:
    """--json, which every benchmark takes, and --device (all but data's)."""
    if device:
        s.add_argument("--device", default="auto", help="auto (CUDA, then Apple's MPS, then the CPU), cpu, cuda[:N], mps")
    s.add_argument("--json", action="store_true", help="print one JSON line instead of a table")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "generate"):
        s = sub.add_parser(name, formatter_class=DefaultsHelp)
        common_arguments(s)
        s.add_argument("--preset", default="paper", choices=sorted(PRESETS))
        s.add_argument("--compile", action="store_true", help="torch.compile the model")
        s.add_argument("--codec", default="spectral", choices=["spectral", "encodec_random", "encodec_32khz", "none"],
                       help="codec whose encode/decode time is measured (random weights, or the trained Encodec)")
        s.add_argument("--codec-weights", default=None, help="local facebook/encodec_32khz folder (--codec encodec_32khz)")
        s.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (0: torch's default); 1 is steadier on a CPU shared with other work")
    t = sub.choices["train"]
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--crop-seconds", type=float, default=decode.DEFAULT_WINDOW_SECONDS)
    t.add_argument("--steps", type=int, default=10, help="timed steps")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    g = sub.choices["generate"]
    g.add_argument("--seconds", type=float, default=decode.DEFAULT_WINDOW_SECONDS, help="stem length")
    g.add_argument("--steps", type=int, nargs="+", default=list(decode.Sampling.steps),
                   help=f"decoding steps per level per {decode.STEPS_FRAMES} decoded frames (decode.steps_for)")
    g.add_argument("--context-seconds", type=float, default=180.0,
                   help="a long context to time, in windows of --seconds with half-window overlaps (0: skip it)")
    g.add_argument("--measured-windows", type=int, default=4,
                   help="windows of the long context actually decoded; its time is its forward passes x the "
                        "measured time per pass (0: decode them all)")
    g.add_argument("--rounds", type=int, default=3,
                   help="measurements of the time per pass; the least is kept")
    g.add_argument("--guidance", default=decode.Sampling.guidance, choices=list(decode.GUIDANCE_MODES))
    add_data_parser(sub)
    add_codec_parser(sub)
    return p


def add_data_parser(sub) -> None:
    d = sub.add_parser("data", formatter_class=DefaultsHelp,
                       help="training items/s of a Slakh-layout folder, and its activity maps' build and load times")
    common_arguments(d, device=False)
    d.add_argument("--data", required=True, help="Slakh-layout dataset folder (read only)")
    d.add_argument("--split", default="train")
    d.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (both paths)")
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--items", type=int, default=200, help="items per round")
    d.add_argument("--rounds", type=int, default=2, help="rounds of each path, alternating")
    d.add_argument("--crop-seconds", type=float, default=CROP_SECONDS)
    d.add_argument("--sample-rate", type=int, default=SpectralConfig.sample_rate)
    d.add_argument("--cache-dir", default=None, help="activity cache folder (default: a temporary one)")


def add_codec_parser(sub) -> None:
    c = sub.add_parser("codec", formatter_class=DefaultsHelp,
                       help="round-trip quality of a codec on held-out audio (spectral convergence, chroma)")
    common_arguments(c)
    c.add_argument("--codec", required=True, help="fitted spectral codec file, or encodec_32khz")
    c.add_argument("--codec-weights", default=None, help="local facebook/encodec_32khz folder (encodec_32khz)")
    c.add_argument("--data", required=True, help="dataset folder (test/ split used when present)")
    c.add_argument("--seconds", type=float, default=CROP_SECONDS, help="audio per file (from its start)")
    c.add_argument("--max-files", type=int, default=None, help="measure a random subset of this many files")
    c.add_argument("--seed", type=int, default=0)


BENCHMARKS = {"train": bench_train, "generate": bench_generate, "data": bench_data, "codec": bench_codec}


def main(argv=None) -> int:
    """Run one benchmark and print what it measured: a table, or one JSON line with --json."""
    args = build_parser().parse_args(argv)
    torch.manual_seed(0)
    if getattr(args, "threads", 0) > 0:
        torch.set_num_threads(args.threads)
    try:
        res = BENCHMARKS[args.cmd](args)
    except (CodecUnavailable, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    if args.json:
        print(json.dumps(res))
    elif args.cmd == "codec":
        print(roundtrip.table(res["rows"]))
    else:
        for k, v in res.items():
            print(f"{k:>28}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
