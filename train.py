"""Train StemGen (Sec. 3 of the paper).

    python train.py                      # built-in demo: composed songs and real works, offline codec, tiny model (CPU)
    python train.py --data slakh/        # the paper's recipe on a Slakh-layout dataset (paper preset, Encodec)
    torchrun --nproc_per_node=8 train.py --data slakh/   # DistributedDataParallel
    python train.py --out RUN --resume   # continue a run bit-for-bit

The recipe (Sec. 3, training/recipes.py): AdamW, batch 40, 20 s crops, tri-stage learning rate, independent
dropout of the context and the instrument (Sec. 2.1.2), level-wise masking of the target (masking.py).
Validation scores held-out pairs with the whole target masked (training/validation.py), OUT/best.pt keeps the
weights with the lowest NLL, and the run stops early when that NLL stops improving.

With the paper's recipe pairs are drawn and tokenised on the fly (the context is a random sub-mix, so its
tokens cannot be cached); the CPU recipes draw a pool of pairs once and train from it (training/pool.py).
Either way each training item is a pure function of (seed, step), so `--resume` continues bit-for-bit.
A finished run: `python -m training.curves --out RUN` draws its curves, `python -m training.ship` ships it.
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
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from tqdm import tqdm

import data
from audio.files import atomic_write
from audio.instruments import INSTRUMENTS, NULL_INSTRUMENT
from cli.common import USER_ERROR, pick_device
from codec import CodecUnavailable
from masking import Objective, masked_loss
from model import PRESETS, ModelConfig, StemGen, autocast, count_parameters
from songs import demo
from songs.demo import DEMO_DATA
from songs.synth import SynthError
from spectral.fit import training_codec
from training import pool, validation
from training.checkpoint import BEST, DEFAULT_CHECKPOINT, class_counts, load_checkpoint, make_checkpoint, save_checkpoint
from training.distributed import (finish_distributed, is_main, mean_over_processes, setup_distributed, stop_all,
                                  sum_over_processes, wrap_model)
from training.recipes import RECIPES, Recipe, knob_fields, knob_values, recipe_values

DEFAULT_OUT = os.path.dirname(DEFAULT_CHECKPOINT)  # generate.py looks for runs/default/ckpt.pt
MAX_NONFINITE_IN_A_ROW = 10
RUN_FLAGS = ("data", "recipe", "out", "demo", "codec_weights", "codec_file", "init_from", "compile", "device",
             "no_progress")  # what a checkpoint keeps of a run beside its recipe's knobs (train_args)


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


@dataclass
class RunState:
    """The loop's counters, saved in every checkpoint."""
    step: int = 0
    best: float = math.inf        # lowest validation NLL so far
    best_step: int = 0
    nonfinite: int = 0            # skipped non-finite steps in all
    in_a_row: int = 0
    class_counts: list | None = field(default_factory=lambda: [0] * len(INSTRUMENTS))  # targets seen, per class


def build_model(r: Recipe, codec, device, resume: dict | None, init_from: str | None):
    """The model (fresh, from --init-from, or as saved), AdamW, the tri-stage schedule and the run's counters."""
    frames = math.ceil(r.crop_seconds * codec.frame_rate)
    base = PRESETS[r.preset]
    cfg = (ModelConfig.from_dict(resume["model_config"]) if resume is not None else
           replace(base, n_q=codec.n_q, bins=codec.bins, max_len=max(base.max_len, frames)))
    if frames > cfg.max_len:
        raise TrainError(f"--crop-seconds {r.crop_seconds} is longer than the model's max_len ({cfg.max_len} frames)")
    model = StemGen(cfg)
    if r.codeword_init and resume is None:
        model.init_from_codewords(codec.codewords(), torch.Generator().manual_seed(r.seed))
    model = model.to(device)
    init = load_checkpoint(init_from, "cpu") if init_from else None
    if init is not None:
        try:
            model.load_state_dict(init["model"])
        except RuntimeError as e:
            raise TrainError(f"--init-from {init_from} does not fit this model (preset/codec differ): "
                             f"{str(e).splitlines()[0]}") from None
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=(0.9, 0.95), weight_decay=r.weight_decay,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: tri_stage_lr(s, r.warmup, r.hold, r.decay, r.final_lr_frac))
    state = RunState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        state = RunState(resume["step"], resume.get("best_val_nll", math.inf), resume["best_step"],
                         resume.get("nonfinite_steps", 0), 0, class_counts(resume))
        torch.set_rng_state(resume["rng"]["torch"])
    elif init is not None:   # fine-tuning keeps what the weights were trained on
        state.class_counts = class_counts(init)
    return model, opt, sched, state


def train_step(fwd, model, opt, sched, micro_batches, r: Recipe, state: RunState, rank: int, device) -> float:
    """One optimizer step over accumulated micro-batches; a non-finite loss skips it (10 in a row stop the run)."""
    opt.zero_grad(set_to_none=True)
    loss_sum, accum = 0.0, len(micro_batches)
    g = torch.Generator(device=device)
    for j, (ctx, tgt, inst, negative) in enumerate(micro_batches):
        # masks and dropout of micro-batch j are a function of (seed, step, its global index), so a resumed
        # run, and N processes versus N-fold accumulation, draw the same ones
        g.manual_seed((r.seed * 1_000_003 + state.step) * 4096 + rank * accum + j)
        with autocast(device):
            loss = masked_loss(fwd, ctx.to(device), tgt.to(device), inst.to(device), r.objective, NULL_INSTRUMENT, g,
                               None if negative is None else negative.to(device))
        (loss / accum).backward()
        loss_sum += loss.detach() / accum
    loss_val = mean_over_processes(float(loss_sum), device)
    if math.isfinite(loss_val):                            # the same on every process: the loss is averaged
        state.in_a_row = 0
        if state.class_counts is not None:                 # targets per class, all processes: generate.py
            seen = torch.bincount(torch.cat([b[2] for b in micro_batches]).long().cpu(), minlength=len(INSTRUMENTS))
            seen = sum_over_processes(seen[:len(INSTRUMENTS)].to(device)).cpu()   # refuses classes never seen
            state.class_counts = [a + int(b) for a, b in zip(state.class_counts, seen)]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    else:                                                  # skip the step, count it; the schedule moves on
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
        state.nonfinite, state.in_a_row = state.nonfinite + 1, state.in_a_row + 1
        if state.in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise TrainError(f"{state.in_a_row} non-finite losses in a row at step {state.step}; stopping "
                             "(lower --lr, or check the data for NaN audio)")
    sched.step()
    state.step += 1
    return loss_val


def prepare(r: Recipe, run: dict, device, resume: dict | None, ckpt_path: str):
    """The run's folder, its data (the demo's is made on first use) and its codec (fitted on the data if need be)."""
    if resume is None and os.path.isfile(ckpt_path) and is_main():
        raise TrainError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
    if is_main():
        os.makedirs(run["out"], exist_ok=True)
        tidy_run_folder(run["out"], None if resume is None else resume["step"])
    if run["demo"] and run["data"] == DEMO_DATA and (is_main() or os.path.isdir(run["data"])):
        demo.demo_data(run["data"], r.seed, progress=not run["no_progress"])
    if not os.path.isdir(run["data"]):
        raise TrainError(f"dataset folder not found: {run['data']}")
    return training_codec(r, run["data"], device, run["codec_file"], run["codec_weights"], not run["no_progress"],
                          None if resume is None else resume["codec_spec"], may_fit=is_main())


def tidy_run_folder(out: str, resumed_step: int | None) -> None:
    """What a killed run leaves: the temporary file of a save it never finished (removed), and metrics.jsonl rows
    past the step it resumes from, which the resumed run logs again (dropped, so that each step has one row)."""
    for name in os.listdir(out):
        if name.startswith(".tmp-") and name.endswith(".pt"):
            os.remove(os.path.join(out, name))
            print(f"removed {name}, left by a save that was interrupted", file=sys.stderr)
    path = os.path.join(out, "metrics.jsonl")
    if resumed_step is None or not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if json.loads(line).get("step", 0) <= resumed_step]

    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(kept)
    if len(kept) < len(lines):
        atomic_write(path, write, ".jsonl", overwrite=True)


def train(r: Recipe, run: dict, resume: dict | None = None) -> dict:
    """Set up (processes, data, codec, model, batches, validation pairs), then optimizer steps until max_steps,
    early stop or Ctrl-C, with logging, validation and checkpoints; the latest state is saved however it ends."""
    rank, world, device = setup_distributed()
    device = device if run["device"] == "auto" else pick_device(run["device"])
    out, progress = run["out"], not run["no_progress"]
    if r.threads:
        torch.set_num_threads(r.threads)
    torch.manual_seed(r.seed)
    ckpt_path, best_path = os.path.join(out, os.path.basename(DEFAULT_CHECKPOINT)), os.path.join(out, BEST)
    codec = prepare(r, run, device, resume, ckpt_path)
    model, opt, sched, state = build_model(r, codec, device, resume, run["init_from"])
    fwd, (micro, accum) = wrap_model(model, run["compile"], world, device), pool.split_batch(r.batch, r.micro_batch, world)
    batches, token_cache = pool.training_batches(codec, r, run["data"], pool.Shard(state.step, rank, accum, micro),
                                                 device, progress)
    val = validation.validation_pairs(codec, r, run["data"], progress) if is_main() else None
    train_args = {**run, **knob_values(r)}
    save = lambda path: save_checkpoint(path, make_checkpoint(model, codec, opt, sched, asdict(state), train_args,
                                                              r.sampling))
    metrics = None
    if is_main():
        print(f"model: {r.preset} preset, {count_parameters(model) / 1e6:.1f} M parameters; codec "
              f"{codec.spec()['name']} ({codec.n_q} x {codec.bins}); device {device}; batch {r.batch} "
              f"({world} processes x {micro} per forward pass); crop {r.crop_seconds} s", file=sys.stderr)
        metrics = open(os.path.join(out, "metrics.jsonl"), "a")
    stop_reason, interrupted, t0, tokens = "max steps reached", [], time.time(), 0
    old_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    bar = tqdm(total=r.max_steps, initial=state.step, desc="training", unit="step", disable=not progress or not is_main())
    model.train()
    try:
        while state.step < r.max_steps:
            loss = train_step(fwd, model, opt, sched, next(batches), r, state, rank, device)
            tokens += r.batch * codec.n_q * math.ceil(r.crop_seconds * codec.frame_rate)
            bar.update(1)
            if is_main():
                validation.log_step(bar, metrics, loss, state, sched.get_last_lr()[0], tokens / (time.time() - t0))
                if (state.step % r.eval_every == 0 or state.step == r.max_steps) and \
                        validation.log_validation(model, val, micro, state, metrics):
                    save(best_path)
                if state.step % r.save_every == 0:
                    save(ckpt_path)
            # one agreement per step: Ctrl-C on any process, or rank 0's early stop (it alone validates)
            early = is_main() and state.best_step > 0 and state.step - state.best_step >= r.patience
            if stop_all(bool(interrupted) or early, device):
                stop_reason = ("interrupted (Ctrl-C); checkpoint saved" if interrupted else
                               f"early stop: no lower validation NLL for {r.patience} steps")
                break
    finally:
        signal.signal(signal.SIGINT, old_handler)
        bar.close()
        if is_main():
            save(ckpt_path)
            metrics.close()
    result = {"step": state.step, "best_val_nll": state.best, "best_step": state.best_step,
              "sample_rate": codec.sample_rate, "stop_reason": stop_reason, "nonfinite_steps": state.nonfinite}
    if is_main():
        print(f"\n{stop_reason} at step {state.step}; checkpoint {ckpt_path}; lowest validation NLL at step "
              f"{state.best_step}: {best_path} (scored below){pool.cache_line(token_cache)}", file=sys.stderr)
        result["report"] = validation.report_best(model, val, micro, codec.frame_rate, best_path, out, state.step)
    return result


# ------------------------------------------------------------------------------------------------- CLI

def yes_no(text: str) -> bool:
    """A boolean knob's value on the command line: yes/no, true/false, 1/0."""
    value = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give yes or no")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train StemGen. Without --data: the built-in CPU demo (renders composed songs and real works, "
                    "fits the offline spectral codec, trains the tiny preset from a pool of pre-tokenised pairs, and "
                    "reports whether it listens). With --data: the paper's recipe (Sec. 3) on a Slakh-layout "
                    "dataset. Each knob below defaults to the recipe's value, shown as (paper | demo).")
    p.add_argument("--data", help="Slakh-layout dataset folder (TrackNNNNN/metadata.yaml + stems/SNN.flac)")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="the recipe whose values fill unset knobs (default: paper with --data, demo without)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"run folder: ckpt.pt, best.pt, metrics.jsonl (default: {DEFAULT_OUT})")
    paper, demo_values = recipe_values("paper"), recipe_values("demo")
    types = {"int": int, "float": float, "str": str, "float | None": float, "bool": yes_no}   # the knobs' annotations
    choices = {"preset": sorted(PRESETS), "codec": ["encodec_32khz", "spectral"], "encode_dtype": list(pool.ENCODE_DTYPES)}
    for f in knob_fields():
        p.add_argument("--" + f.name.replace("_", "-"), type=types[f.type], choices=choices.get(f.name),
                       help=f"{f.metadata['help']} ({paper[f.name]} | {demo_values[f.name]})")
    p.add_argument("--codec-weights", help="local folder/file with facebook/encodec_32khz weights (offline use)")
    p.add_argument("--codec-file", help="fitted spectral codec file (default: DATA/spectral_codec.pt, fitted if absent)")
    p.add_argument("--resume", action="store_true", help="continue OUT/ckpt.pt bit-for-bit (model, optimizer, schedule, step)")
    p.add_argument("--init-from", help="start from a checkpoint's weights only (fresh optimizer and schedule)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda[:N], mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def resolve_recipe(args, saved: dict | None = None) -> tuple[Recipe, dict]:
    """The run's Recipe and its other settings: each unset knob from the resumed run's settings, else from the
    recipe (the paper's with --data, the CPU demo's without); the knobs checked."""
    saved = saved or {}
    given = {k: v for k, v in vars(args).items() if v is not None}
    demo_run = saved.get("demo", args.data is None)
    name = args.recipe or saved.get("recipe") or ("demo" if demo_run else "paper")
    values = {**recipe_values(name), **{k: v for k, v in saved.items() if k in recipe_values(name)}, **given}
    objective = Objective(**{f.name: values[f.name] for f in fields(Objective)})
    objective.check()
    r = Recipe(**{f.name: values[f.name] for f in fields(Recipe) if f.name not in ("objective", "sampling")},
               objective=objective, sampling=RECIPES[name].sampling)
    if r.decay <= 0 or r.warmup < 0 or r.hold < 0 or r.batch < 1 or r.micro_batch < 1:
        raise TrainError("need --decay > 0, --warmup >= 0, --hold >= 0, --batch >= 1 and --micro-batch >= 1")
    if r.crop_grid < 0 or r.token_cache_gb < 0:
        raise TrainError("need --crop-grid >= 0 and --token-cache-gb >= 0")
    if r.token_cache_gb > 0 and not r.crop_grid:
        raise TrainError("--token-cache-gb needs --crop-grid > 0: crops that start anywhere never recur, so no "
                         "cached tokens would be used")
    if r.val_pairs < 2 or r.pool_pairs < 0:
        raise TrainError("need --val-pairs >= 2 and --pool-pairs >= 0")
    if r.objective.harmony_weight > 0 and (not r.pool_pairs or r.codec != "spectral"):
        raise TrainError("--harmony-weight needs a token pool (--pool-pairs > 0) and --codec spectral: its negative "
                         "moves the context's chords inside the spectral codec's magnitude frames, once per pair")
    run = {k: saved[k] if getattr(args, k, None) is None and k in saved else getattr(args, k, None) for k in RUN_FLAGS}
    run.update(recipe=name, demo=demo_run, data=run["data"] or DEMO_DATA, device=run["device"] or "auto")
    return r, run


def main(argv=None) -> int:
    args = parse_args(argv)
    ok = False
    try:
        resume = None
        if args.resume:
            path = os.path.join(args.out, os.path.basename(DEFAULT_CHECKPOINT))
            if not os.path.isfile(path):
                raise TrainError(f"--resume: no checkpoint at {path}")
            resume = load_checkpoint(path, "cpu")
        recipe, run = resolve_recipe(args, resume["train_args"] if resume else None)
        result = train(recipe, run, resume)
        if is_main() and run["demo"]:
            ctx, name = demo.demo_context(run["data"], os.path.join(run["out"], "demo_context.wav"),
                                          result["sample_rate"], recipe.seed)
            best = os.path.join(run["out"], BEST)
            print(f"\ntry: python generate.py --checkpoint {best} --context {ctx} --instrument {name.lower()!r}",
                  file=sys.stderr)
        ok = True
        return 0
    except (TrainError, data.DatasetError, CodecUnavailable, SynthError, FileNotFoundError,
            FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    finally:
        finish_distributed(ok)


if __name__ == "__main__":
    sys.exit(main())
