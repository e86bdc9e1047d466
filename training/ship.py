"""Ship a finished run: its best weights as a small checkpoint, with where they came from.

    python -m training.ship --out runs/music checkpoints/mine.pt
    python -m training.ship --out runs/music checkpoints/mine.pt --sampling fine_temperature=0 temperature=0.5
    python -m training.ship --from checkpoints/mine.pt checkpoints/mine.pt --sampling scale_audio=5 --reason "..."

The shipped file keeps what generation needs (weights in bf16, config, codec, class counts, training arguments,
the sampling it recommends) and its provenance: the train.py commands of every stage (a run fine-tuned with
--init-from names the run it started from), the commit, the data, the training time and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from cli.common import USER_ERROR, source_commit
from decode import check_sampling, parse_sampling, sampling_text
from training.checkpoint import BEST, SAMPLING, CheckpointError, load_checkpoint, save_checkpoint
from training.recipes import recipe_values


def shipped(ckpt: dict, provenance: dict, sampling: dict | None = None) -> dict:
    """A checkpoint cut down to what generation needs (weights in bf16, config, codec, class counts, training
    arguments, the sampling it recommends) plus where it came from: small enough to ship in the repository.
    `sampling`, if given, replaces the recommendation the checkpoint carries ({}: none)."""
    keep = ("model_config", "codec_spec", "step", "best_val_nll", "best_step", "class_counts", "train_args",
            SAMPLING)
    out = {k: ckpt[k] for k in keep if k in ckpt}
    out["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    out["provenance"] = dict(provenance)
    if sampling is not None:
        out.pop(SAMPLING, None)
        try:
            out.update({SAMPLING: check_sampling(sampling)} if sampling else {})
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return out


STAGE_FLAGS = ("codec_file", "init_from")  # run arguments, not recipe knobs, that a stage's command must name


def train_command(a: dict) -> str:
    """The train.py command line of a run from its saved arguments: data, recipe and out, then every knob whose
    value differs from the recipe's, the codec file and --init-from."""
    words = ["python train.py", f"--data {a.get('data')}", f"--recipe {a.get('recipe')}", f"--out {a.get('out')}"]
    defaults = recipe_values(a["recipe"]) if a.get("recipe") else {}
    for k, v in defaults.items():
        if k in a and a[k] != v:
            words.append(f"--{k.replace('_', '-')} {a[k]}")
    words += [f"--{k.replace('_', '-')} {a[k]}" for k in STAGE_FLAGS if a.get(k)]
    return " ".join(words)


def training_stages(a: dict, limit: int = 10) -> list[str]:
    """The commands of the runs a run was fine-tuned from (--init-from, followed while the files exist here),
    first stage first, ending with the run's own."""
    stages = [train_command(a)]
    while a.get("init_from") and os.path.isfile(a["init_from"]) and len(stages) < limit:
        a = load_checkpoint(a["init_from"], "cpu").get("train_args", {})
        stages.insert(0, train_command(a))
    return stages


def ship_run(out: str, dst: str, sampling: dict | None = None) -> str:
    """Write a finished run's best weights as a checkpoint to ship (shipped), with where they came
    from, and `sampling` as its recommendation (None: the one the weights
    carry); returns a line saying what was written."""
    src = os.path.join(out, BEST)
    if not os.path.isfile(src):
        raise CheckpointError(f"no {src}; train first (python train.py --out {out})")
    ckpt = load_checkpoint(src, "cpu")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        times = [r["time"] for r in map(json.loads, f) if "time" in r]
    a = {**ckpt.get("train_args", {}), "out": out}
    commit = source_commit()
    stages = training_stages(a)
    provenance = {
        "command": stages[-1], "stages": stages,
        "commit": commit[:7] if commit else "unknown", "data": a.get("data"), "best_step": ckpt.get("best_step"),
        "train_seconds": round(times[-1] - times[0]) if len(times) > 1 else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "written": time.strftime("%Y-%m-%d"), "train_args": a}
    small = shipped(ckpt, provenance, sampling)
    save_checkpoint(dst, small)
    recommends = f"; recommends {sampling_text(small[SAMPLING])}" if SAMPLING in small else ""
    return f"wrote {dst} ({os.path.getsize(dst) / 2**20:.1f} MB){recommends}: {provenance}"


def reship(src: str, dst: str, sampling: dict, reason: str) -> str:
    """A shipped checkpoint with a new recommended sampling (the whole recommendation) and nothing else changed (the weights as they are);
    the change is added to its provenance ("sampling_changes": when, from what, to what, why)."""
    ckpt = load_checkpoint(src, "cpu")
    if "provenance" not in ckpt:
        raise CheckpointError(f"{src} is not a shipped checkpoint (no provenance): ship a run with --out")
    try:
        new = check_sampling(sampling)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    change = {"written": time.strftime("%Y-%m-%d"), "previous": dict(ckpt.get(SAMPLING, {})), "sampling": new,
              "reason": reason}
    provenance = {**ckpt["provenance"]}
    provenance["sampling_changes"] = [*provenance.get("sampling_changes", []), change]
    out = {**ckpt, "provenance": provenance}
    out.pop(SAMPLING, None)
    out.update({SAMPLING: new} if new else {})
    save_checkpoint(dst, out)
    said = [sampling_text(d) if d else "the paper's values" for d in (new, change["previous"])]
    return f"wrote {dst}: recommends {said[0]} (was {said[1]})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ship", description=__doc__.split("\n\n")[0])
    p.add_argument("dst", metavar="PATH", help="where to write the shipped checkpoint")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--out", help="the finished run's folder (its best.pt and metrics.jsonl)")
    source.add_argument("--from", dest="src", metavar="FILE",
                        help="a shipped checkpoint whose recommended sampling changes (--sampling and --reason "
                             "required); its weights and provenance are kept, and the change is added to it")
    p.add_argument("--sampling", nargs="+", metavar="KNOB=VALUE",
                   help="sampling the shipped checkpoint recommends, e.g. fine_temperature=0 (generate.py, "
                        "evaluate.py and the page apply it over the paper's values unless a flag overrides it or "
                        "--paper-sampling is given); choose it on validation data (default: what the run's "
                        "checkpoints recommend, their recipe's; none: the paper's values)")
    p.add_argument("--reason", help="with --from: why the sampling changes (e.g. the log entry that chose it)")
    args = p.parse_args(argv)
    if args.src and not (args.sampling and args.reason):
        p.error("--from needs --sampling and --reason")
    try:
        if args.src:
            print(reship(args.src, args.dst, parse_sampling(args.sampling), args.reason))
            return 0
        print(ship_run(args.out, args.dst, parse_sampling(args.sampling) if args.sampling else None))
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
