"""Train StemGen (Sec. 3 of the paper).

    python train.py                      # built-in demo: synthetic data, offline codec, tiny model (CPU, ~15 min)
    python train.py --data slakh/        # the paper's recipe on a Slakh-layout dataset (paper preset, Encodec)
    torchrun --nproc_per_node=8 train.py --data slakh/   # DistributedDataParallel

The recipe (Sec. 3): AdamW, batch 40, 20 s crops, tri-stage learning rate (10k warm-up, 50k at 5e-4, then an
exponential decay over 300k steps), independent dropout of the context and the instrument (Sec. 2.1.2),
level-wise masking of the target (masking.py), cross-entropy on the masked positions, validation
masked-token accuracy on fixed pairs and masks, early stop after 20k steps without improvement.

Context and target are tokenized on the fly on the training device: the context is a random sub-mix, so
its tokens cannot be cached. Each training item is a pure function of (seed, item index), the masks of
(seed, step), so `--resume` continues bit-for-bit.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import codec as codec_lib
import data
import spectral
import synth
from guidance import drop_conditions
from masking import mask_target
from checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from model import PRESETS, ModelConfig, StemGen, autocast, count_parameters

DEFAULT_OUT = os.path.dirname(DEFAULT_CHECKPOINT)  # generate.py looks for runs/default/ckpt.pt
DEMO_DATA = os.path.join("data", "synth")

# The paper's recipe (Sec. 3) for --data runs, and the CPU demo used when no --data is given.
# Knobs not given on the command line take their value from one of these two tables.
PAPER = dict(preset="paper", codec="encodec_32khz", codec_bins=1024, batch=40, micro_batch=8, crop_seconds=20.0,
             lr=5e-4, warmup=10_000, hold=50_000, decay=300_000, final_lr_frac=0.01, weight_decay=0.01,
             max_steps=360_000, patience=20_000, eval_every=1000, save_every=1000, val_pairs=400,
             p_drop_context=0.2, p_drop_instrument=0.2, prefix_prob=0.1, max_prefix=0.9, workers=4, seed=0)
DEMO = dict(preset="tiny", codec="spectral", codec_bins=1024, batch=16, micro_batch=16, crop_seconds=5.0,
            lr=2e-3, warmup=100, hold=300, decay=200, final_lr_frac=0.1, weight_decay=0.01,
            max_steps=600, patience=600, eval_every=200, save_every=200, val_pairs=64,
            p_drop_context=0.2, p_drop_instrument=0.2, prefix_prob=0.1, max_prefix=0.9, workers=1, seed=0)


MAX_NONFINITE_IN_A_ROW = 10


class TrainError(RuntimeError):
    """A problem the user can fix; reported as one line."""


def tri_stage_lr(step: int, warmup: int, hold: int, decay: int, final_frac: float) -> float:
    """Sec. 3 tri-stage schedule as a factor of the peak LR: linear warm-up, hold, exponential decay.

    The decay reaches `final_frac` of the peak after `decay` steps and stays there (never 0).
    """
    if step < warmup:
        return (step + 1) / warmup
    if step < warmup + hold:
        return 1.0
    t = min(step - warmup - hold, decay) / decay
    return final_frac ** t


def masked_loss(model, ctx_tok, tgt_tok, instrument, args, generator):
    """One training objective evaluation: condition dropout, masking, cross-entropy on masked positions."""
    instrument, ctx_dropped = drop_conditions(instrument, data.NULL_INSTRUMENT, args.p_drop_context,
                                              args.p_drop_instrument, generator)
    cfg = model.module.cfg if hasattr(model, "module") else model.cfg
    masked, loss_mask = mask_target(tgt_tok, cfg.mask_id, generator, prefix_prob=args.prefix_prob,
                                    max_prefix=args.max_prefix)
    level = loss_mask.any(-1).float().argmax(-1)                      # [B] the level each example trains
    logits = model(ctx_tok, masked, instrument, ctx_dropped, level=level)          # [B, T, V]
    at_level = loss_mask[torch.arange(len(level), device=level.device), level]     # [B, T]
    return F.cross_entropy(logits[at_level].float(), tgt_tok[loss_mask])


@torch.no_grad()
def tokenize(codec, wave: torch.Tensor) -> torch.Tensor:
    """[B, S] waves -> [B, Q, T] tokens on the codec's device."""
    return codec.encode(wave.to(codec.device)[:, None, :])


@torch.no_grad()
def build_validation(codec, root: str, args, device) -> dict:
    """Fixed validation pairs (seeded dataset) and fixed masks, one per level; tokens cached once."""
    ds = data.StemPairDataset(root, "validation", codec.sample_rate, args.crop_seconds, seed=10_000 + args.seed,
                              length=args.val_pairs, verbose=False)
    ctx, tgt, inst = [], [], []
    for i in tqdm(range(len(ds)), desc="validation set", leave=False, disable=args.no_progress or not is_main()):
        c, t, k = ds[i]
        ctx.append(tokenize(codec, c[None]))
        tgt.append(tokenize(codec, t[None]))
        inst.append(k)
    ctx, tgt = torch.cat(ctx), torch.cat(tgt)
    inst = torch.tensor(inst, device=ctx.device)
    g = torch.Generator(device=ctx.device).manual_seed(args.seed)
    masks = [mask_target(tgt, codec.bins, g, level=torch.full_like(inst, q)) for q in range(codec.n_q)]
    return dict(ctx=ctx.to(device), tgt=tgt.to(device), inst=inst.to(device),
                masks=[(m.to(device), lm.to(device)) for m, lm in masks])


@torch.no_grad()
def validate(model, val: dict, batch: int, drop_context: bool = False, drop_instrument: bool = False) -> dict:
    """Masked-token accuracy per level and overall on the fixed validation pairs (Sec. 3).

    With drop_context / drop_instrument the same pairs and masks are scored with that condition dropped,
    which shows how much the model listens to the context.
    """
    model.eval()
    correct = [0] * len(val["masks"])
    total = [0] * len(val["masks"])
    n = val["ctx"].shape[0]
    inst_all = torch.full_like(val["inst"], data.NULL_INSTRUMENT) if drop_instrument else val["inst"]
    for q, (masked, loss_mask) in enumerate(val["masks"]):
        for i in range(0, n, batch):
            sl = slice(i, i + batch)
            dropped = torch.full((val["ctx"][sl].shape[0],), drop_context, device=val["ctx"].device)
            with autocast(val["ctx"].device):
                logits = model(val["ctx"][sl], masked[sl], inst_all[sl], dropped, level=q)
            lm = loss_mask[sl, q]
            correct[q] += (logits.argmax(-1)[lm] == val["tgt"][sl, q][lm]).sum().item()
            total[q] += lm.sum().item()
    model.train()
    per_level = [c / max(t, 1) for c, t in zip(correct, total)]
    return {"acc": sum(correct) / max(sum(total), 1), "acc_per_level": per_level}


def constant_baseline(val: dict) -> dict:
    """The best input-ignoring predictor: each level's most frequent token among the scored positions.

    Computed on the validation targets themselves, so it is an upper bound for any constant guess.
    """
    correct, total = [], []
    for q, (_, loss_mask) in enumerate(val["masks"]):
        scored = val["tgt"][:, q][loss_mask[:, q]]
        correct.append(torch.bincount(scored).max().item() if scored.numel() else 0)
        total.append(scored.numel())
    return {"acc": sum(correct) / max(sum(total), 1),
            "acc_per_level": [c / max(n, 1) for c, n in zip(correct, total)]}


def listening_report(model, val: dict, batch: int) -> dict:
    """Validation accuracy with both conditions, without the context, without either, and a constant guess."""
    return {"with_context": validate(model, val, batch),
            "context_dropped": validate(model, val, batch, drop_context=True),
            "both_dropped": validate(model, val, batch, drop_context=True, drop_instrument=True),
            "constant_baseline": constant_baseline(val)}


def stop_all(local: bool, device) -> bool:
    """True on every process when any process wants to stop (keeps DDP ranks in step)."""
    if not dist.is_initialized():
        return bool(local)
    flag = torch.tensor([float(local)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def setup_distributed():
    """DDP from torchrun's environment; returns (rank, world, device)."""
    if "RANK" not in os.environ:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return 0, 1, dev
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def resolve_args(args, saved: dict | None = None) -> argparse.Namespace:
    """Fill unset knobs: from the resumed run's settings, else the paper's recipe (--data) or the CPU demo."""
    demo = args.data is None
    if saved:
        for k, v in saved.items():
            if hasattr(args, k) and getattr(args, k) is None:
                setattr(args, k, v)
        demo = saved.get("demo", demo)
    for k, v in (DEMO if demo else PAPER).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.demo = demo
    if args.data is None:
        args.data = DEMO_DATA
    if args.decay <= 0 or args.warmup < 0 or args.hold < 0 or args.batch < 1 or args.micro_batch < 1:
        raise TrainError("need --decay > 0, --warmup >= 0, --hold >= 0, --batch >= 1 and --micro-batch >= 1")
    if not 0 <= args.max_prefix < 1 or not 0 <= args.prefix_prob <= 1:
        raise TrainError("need 0 <= --max-prefix < 1 and 0 <= --prefix-prob <= 1")
    return args


def prepare_codec(args, device, resume: dict | None = None):
    """The paper's Encodec, or the offline spectral codec (fitted on the training data if not there yet).

    A resumed run uses the codec stored in its checkpoint.
    """
    if resume is not None:
        return codec_lib.load_codec(resume["codec_spec"], device=device, weights=args.codec_weights)
    if args.codec == "spectral":
        path = args.codec_file or os.path.join(args.data, "spectral_codec.pt")
        if not os.path.isfile(path):
            if not is_main():
                raise TrainError(f"fit the spectral codec first: python spectral.py fit --data {args.data} --out {path}")
            print(f"fitting the offline spectral codec on {args.data} -> {path}", file=sys.stderr)
            spectral.fit_spectral(args.data, path, bins=args.codec_bins, seed=args.seed,
                                  progress=not args.no_progress)
        return codec_lib.open_codec("spectral", path, device)
    return codec_lib.open_codec(args.codec, args.codec_weights, device)


def make_checkpoint(model, cfg, codec, opt, sched, step, best, best_step, args, nonfinite) -> dict:
    """Everything a resumed run needs; `model` is the plain StemGen (not the DDP or compiled wrapper)."""
    return {
        "model_config": asdict(cfg), "codec_spec": codec.spec(), "model": model.state_dict(),
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
        "best_val_acc": best, "best_step": best_step, "nonfinite_steps": nonfinite,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "train_args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
    }


def write_demo_context(args, sample_rate: int) -> tuple[str, str]:
    """Write a test-split context-mix to OUT/demo_context.wav; return it and the missing stem's class."""
    import audio
    ds = data.StemPairDataset(args.data, "test", sample_rate, crop_seconds=10.0, seed=args.seed, length=1,
                              verbose=False)
    context, _, inst = ds[0]
    context = context.numpy()
    context *= min(1.0, 0.9 / max(float(abs(context).max()), 1e-9))   # a sum of stems may exceed full scale
    path = os.path.join(args.out, "demo_context.wav")
    audio.write_audio(path, context, sample_rate, overwrite=True)
    return path, data.INSTRUMENTS[inst]


def plot_metrics(run_dir: str) -> str:
    """Draw loss and validation accuracy curves of a run's metrics.jsonl to curves.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise TrainError(f"no metrics file at {path}; train first")
    rows = [json.loads(line) for line in open(path)]
    tr = [r for r in rows if r.get("kind") == "train"]
    va = [r for r in rows if r.get("kind") == "val"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr])
    ax[0].set(xlabel="step", ylabel="masked-token loss", title="training loss")
    ax[1].plot([r["step"] for r in va], [r["acc"] for r in va], label="with context")
    if va and "acc_no_context" in va[0]:
        ax[1].plot([r["step"] for r in va], [r["acc_no_context"] for r in va], label="context dropped")
    ax[1].set(xlabel="step", ylabel="accuracy", title="validation masked-token accuracy")
    ax[1].legend()
    out = os.path.join(run_dir, "curves.png")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train StemGen. Without --data: the built-in CPU demo (renders a synthetic Slakh-layout "
                    "dataset, fits the offline spectral codec, trains the tiny preset). With --data: the "
                    "paper's recipe (Sec. 3) on a Slakh-layout dataset. Unset knobs take the recipe's values.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", help="Slakh-layout dataset folder (TrackNNNNN/metadata.yaml + stems/SNN.flac)")
    p.add_argument("--out", default=DEFAULT_OUT, help="run folder: ckpt.pt, metrics.jsonl, curves.png")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model size (paper: 1024 x 20 layers, ~250 M)")
    p.add_argument("--codec", choices=["encodec_32khz", "spectral"], help="audio tokenizer (paper: encodec_32khz)")
    p.add_argument("--codec-weights", help="local folder/file with facebook/encodec_32khz weights (offline use)")
    p.add_argument("--codec-file", help="fitted spectral codec file (default: DATA/spectral_codec.pt, fitted if absent)")
    p.add_argument("--codec-bins", type=int, help="spectral codec: codebook size per level when it is fitted here")
    p.add_argument("--batch", type=int, help="global batch size in examples (paper: 40)")
    p.add_argument("--micro-batch", type=int, help="at most this many examples per forward pass per process "
                   "(the largest divisor of the per-process batch up to it); the rest is gradient accumulation")
    p.add_argument("--crop-seconds", type=float, help="training crop length (paper: 20 s)")
    p.add_argument("--lr", type=float, help="peak learning rate (paper: 5e-4)")
    p.add_argument("--warmup", type=int, help="linear warm-up steps (paper: 10k)")
    p.add_argument("--hold", type=int, help="steps at the peak LR (paper: 50k)")
    p.add_argument("--decay", type=int, help="exponential decay steps (paper: 300k)")
    p.add_argument("--final-lr-frac", type=float, help="LR at the end of the decay, as a fraction of the peak")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--patience", type=int, help="early stop after this many steps without a better val accuracy (paper: 20k)")
    p.add_argument("--eval-every", type=int, help="validate every N steps")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps")
    p.add_argument("--val-pairs", type=int, help="fixed validation pairs")
    p.add_argument("--p-drop-context", type=float, help="probability of dropping the context-mix (Sec. 2.1.2)")
    p.add_argument("--p-drop-instrument", type=float, help="probability of dropping the instrument (Sec. 2.1.2)")
    p.add_argument("--prefix-prob", type=float, help="probability of an unmasked target prefix (window continuation)")
    p.add_argument("--max-prefix", type=float, help="longest unmasked prefix, as a fraction of the crop")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, help="seed of the model init, the data and the masks (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue OUT/ckpt.pt bit-for-bit (model, optimizer, schedule, step)")
    p.add_argument("--init-from", help="start from a checkpoint's weights only (fresh optimizer and schedule)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--tracks", type=int, default=80, help="demo only: synthetic tracks to render")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--plot", action="store_true", help="only draw OUT/metrics.jsonl to OUT/curves.png and exit")
    return p.parse_args(argv)


def train(args, resume: dict | None = None) -> dict:
    rank, world, device = setup_distributed()
    if args.device:
        device = torch.device(args.device)
    torch.manual_seed(args.seed)
    out = args.out
    ckpt_path = os.path.join(out, "ckpt.pt")
    if is_main():
        os.makedirs(out, exist_ok=True)

    # data: the demo renders its dataset on first use
    if args.demo and not os.path.isdir(args.data):
        if not is_main():
            raise TrainError("render the demo data first (python synth.py)")
        print(f"rendering the built-in synthetic dataset into {args.data} ({args.tracks} tracks)", file=sys.stderr)
        synth.make_dataset(args.data, tracks=args.tracks, seed=args.seed)
    if not os.path.isdir(args.data):
        raise TrainError(f"dataset folder not found: {args.data}")

    codec = prepare_codec(args, device, resume)
    train_ds = data.StemPairDataset(args.data, "train", codec.sample_rate, args.crop_seconds, seed=args.seed,
                                    length=10**12, verbose=is_main())

    if resume is not None:
        cfg = ModelConfig.from_dict(resume["model_config"])
    else:
        cfg = replace(PRESETS[args.preset], n_q=codec.n_q, bins=codec.bins,
                      max_len=max(PRESETS[args.preset].max_len, math.ceil(args.crop_seconds * codec.frame_rate)))
        if os.path.isfile(ckpt_path) and is_main():
            raise TrainError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
    if math.ceil(args.crop_seconds * codec.frame_rate) > cfg.max_len:
        raise TrainError(f"--crop-seconds {args.crop_seconds} is longer than the model's max_len ({cfg.max_len} frames)")
    model = StemGen(cfg).to(device)
    if args.init_from:
        src = load_checkpoint(args.init_from, "cpu")
        try:
            model.load_state_dict(src["model"])
        except RuntimeError as e:
            raise TrainError(f"--init-from {args.init_from} does not fit this model (preset/codec differ): "
                             f"{str(e).splitlines()[0]}") from None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: tri_stage_lr(s, args.warmup, args.hold, args.decay, args.final_lr_frac))
    step, best, best_step, nonfinite = 0, -1.0, 0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        step, best, best_step = resume["step"], resume["best_val_acc"], resume["best_step"]
        nonfinite = resume.get("nonfinite_steps", 0)
        torch.set_rng_state(resume["rng"]["torch"])
    fwd = torch.compile(model) if args.compile else model
    if world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None)

    if args.batch % world:
        raise TrainError(f"--batch {args.batch} is not a multiple of the {world} processes")
    per_rank = args.batch // world
    micro = max(d for d in range(1, min(args.micro_batch, per_rank) + 1) if per_rank % d == 0)
    accum = per_rank // micro
    val = build_validation(codec, args.data, args, device) if is_main() else None
    if is_main():
        print(f"model: {args.preset} preset, {count_parameters(model) / 1e6:.1f} M parameters; codec "
              f"{codec.spec()['name']} ({cfg.n_q} x {cfg.bins}); device {device}; batch {args.batch} "
              f"({world} x {micro} x {accum} accumulation); crop {args.crop_seconds} s", file=sys.stderr)

    def item_indices():
        """Item indices are global: step s uses items [s*batch, (s+1)*batch), this rank its own slice."""
        s = step
        while True:
            first = s * args.batch + rank * accum * micro
            yield from range(first, first + accum * micro)
            s += 1

    def batches():
        loader = torch.utils.data.DataLoader(
            train_ds, batch_size=micro, num_workers=args.workers, pin_memory=device.type == "cuda",
            sampler=item_indices(), persistent_workers=args.workers > 0,
            prefetch_factor=4 if args.workers > 0 else None)
        it = iter(loader)
        while True:
            yield [next(it) for _ in range(accum)]

    metrics = open(os.path.join(out, "metrics.jsonl"), "a") if is_main() else None
    stop_reason = "max steps reached"
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    bar = tqdm(total=args.max_steps, initial=step, desc="training", unit="step",
               disable=args.no_progress or not is_main())
    g = torch.Generator(device=device)
    t0, tokens_seen, in_a_row = time.time(), 0, 0
    model.train()
    data_iter = batches()
    try:
        while step < args.max_steps:
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for j, (ctx_w, tgt_w, inst) in enumerate(next(data_iter)):
                # masks and dropout of micro-batch j are a function of (seed, step, its global index), so a
                # resumed run, and N processes versus N-fold accumulation, draw the same ones
                g.manual_seed((args.seed * 1_000_003 + step) * 4096 + rank * accum + j)
                ctx_tok, tgt_tok = tokenize(codec, ctx_w), tokenize(codec, tgt_w)   # [b, Q, T]
                with autocast(device):
                    loss = masked_loss(fwd, ctx_tok.to(device), tgt_tok.to(device), inst.to(device), args, g)
                (loss / accum).backward()
                loss_sum += loss.detach() / accum
                tokens_seen += tgt_tok.numel()
            loss_val = loss_sum.item()
            if world > 1:
                t = torch.tensor([loss_val], device=device)
                dist.all_reduce(t)
                loss_val = t.item() / world
            if not math.isfinite(loss_val):                       # skip the step, count it
                nonfinite += 1
                in_a_row += 1
                if in_a_row >= MAX_NONFINITE_IN_A_ROW:
                    raise TrainError(f"{in_a_row} non-finite losses in a row at step {step}; stopping "
                                     f"(lower --lr, or check the data for NaN audio)")
                opt.zero_grad(set_to_none=True)
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            else:
                in_a_row = 0
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if is_main():
                rate = tokens_seen * world / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_val:.3f}", val_acc=f"{best:.3f}" if best >= 0 else "-",
                                lr=f"{sched.get_last_lr()[0]:.2e}", tok_s=f"{rate:.0f}")
                metrics.write(json.dumps({"kind": "train", "step": step, "loss": loss_val,
                                          "lr": sched.get_last_lr()[0], "tokens_per_s": rate}) + "\n")
                if step % args.eval_every == 0 or step == args.max_steps:
                    v = validate(model, val, micro)
                    v0 = validate(model, val, micro, drop_context=True)
                    if v["acc"] > best:
                        best, best_step = v["acc"], step
                    metrics.write(json.dumps({"kind": "val", "step": step, **v, "acc_no_context": v0["acc"],
                                              "acc_per_level_no_context": v0["acc_per_level"]}) + "\n")
                    metrics.flush()
                if step % args.save_every == 0:
                    save_checkpoint(ckpt_path, make_checkpoint(model, cfg, codec, opt, sched, step, best,
                                                               best_step, args, nonfinite))
            # one agreement per step: Ctrl-C on any process, or rank 0's early stop (it alone validates)
            early = is_main() and best_step > 0 and step - best_step >= args.patience
            if stop_all(interrupted or early, device):
                stop_reason = ("interrupted (Ctrl-C); checkpoint saved" if interrupted else
                               f"early stop: no better validation accuracy for {args.patience} steps")
                break
    finally:
        signal.signal(signal.SIGINT, old_handler)
        bar.close()
        if is_main():
            save_checkpoint(ckpt_path, make_checkpoint(model, cfg, codec, opt, sched, step, best, best_step,
                                                       args, nonfinite))
            metrics.close()
    result = {"step": step, "best_val_acc": best, "sample_rate": codec.sample_rate, "stop_reason": stop_reason, "nonfinite_steps": nonfinite}
    if is_main():
        report = listening_report(model, val, micro)
        result["listening"] = report
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"kind": "final", "step": step, **report}) + "\n")
        print(f"\n{stop_reason} at step {step}; checkpoint {ckpt_path}", file=sys.stderr)
        print("validation masked-token accuracy (overall | per level):", file=sys.stderr)
        for name, r in report.items():
            print(f"  {name:>18}: {r['acc']:.3f} | {' '.join(f'{a:.3f}' for a in r['acc_per_level'])}",
                  file=sys.stderr)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.plot:
            print(plot_metrics(args.out))
            return 0
        resume = None
        if args.resume:
            path = os.path.join(args.out, "ckpt.pt")
            if not os.path.isfile(path):
                raise TrainError(f"--resume: no checkpoint at {path}")
            resume = load_checkpoint(path, "cpu")
        args = resolve_args(args, resume["train_args"] if resume else None)
        result = train(args, resume)
        if is_main() and args.demo:
            ctx, name = write_demo_context(args, result["sample_rate"])
            print(f"\ntry: python generate.py --context {ctx} --instrument {name.lower()!r}", file=sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 0
    except (TrainError, data.DatasetError, codec_lib.CodecUnavailable, synth.SynthError, FileNotFoundError,
            FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
