"""Does a sampling make the shipped model's bass follow the chords in time? The sweep behind docs/log.md's entry
"Sampling for chords in time" (2026-12-07), on validation works only.

    python -m scripts.harmony_sampling --data data/transposed-val48 --split validation

For each candidate sampling: the generated bass of every context of the transposition test (evaluate.py's), its
key score, chords in time and movement (metrics/harmony.py) and harmonic share, with piece-bootstrap intervals;
the real bass beside them. Prints one Markdown table and writes OUT.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace

import decode
from metrics import musicality
from metrics.sweep import generate_stems
from training.checkpoint import SHIPPED_CHECKPOINT, load_model, recommended_sampling

CANDIDATES = {"current": {}, "level-0 steps x4": {"steps": (512, 64, 32, 32)}, "level-0 temperature 1.0":
              {"temperature": 1.0}, "lambda_a 5": {"scale_audio": 5.0},
              # the second round (docs/log.md), written down after the first round's figures and before its own
              "lambda_a 8": {"scale_audio": 8.0}, "lambda_a 12": {"scale_audio": 12.0},
              # timing guidance (guidance.timing_guided), over the file's sampling once lambda_a 5 was shipped
              "lambda_t 1": {"scale_timing": 1.0}, "lambda_t 2": {"scale_timing": 2.0},
              "lambda_t 4": {"scale_timing": 4.0},
              # the order in which decoding fixes level 0 (eq. 1 weights, steps), over the file's sampling
              "w_s 0": {"w_s": 0.0}, "w_s 0.5": {"w_s": 0.5}, "w_r 0.3": {"w_r": 0.3},
              "level-0 steps x0.5": {"steps": (64, 64, 32, 32)},
              # eq. 2 on the joint condition (its branch knows the instrument and the context together), and eq. 3
              # with a weaker pull towards the instrument alone
              "eq. 2 lambda 3": {"guidance": "joint", "scale_audio": 3.0},
              "eq. 2 lambda 5": {"guidance": "joint", "scale_audio": 5.0},
              "eq. 2 lambda 8": {"guidance": "joint", "scale_audio": 8.0},
              "lambda_i 1.5": {"scale_instrument": 1.5},
              # timing guidance whose shifted context is rolled by about a beat (0.5 s, 1 s of a 5 s window)
              "lambda_t 2, shift 0.1": {"scale_timing": 2.0, "timing_shift": 0.1},
              "lambda_t 2, shift 0.2": {"scale_timing": 2.0, "timing_shift": 0.2},
              # for the harmony sitting's weights, which follow the key but move too much at the file's sampling
              "lambda_a 3": {"scale_audio": 3.0}, "level-0 temperature 0.3": {"temperature": 0.3},
              # between the two: the colder level 0 with a weaker context pull
              "temperature 0.3, lambda_a 4": {"temperature": 0.3, "scale_audio": 4.0},
              "temperature 0.2, lambda_a 4": {"temperature": 0.2, "scale_audio": 4.0}}


def validation_bass(checkpoint: str, data: str, split: str, keys, seconds: float):
    """The checkpoint's model and tokenizer, its recommended sampling over the paper's, and the bass examples of
    the transposition test (musicality.transposition_examples) in the given transpositions, with the skip counts."""
    net, tok, ckpt = load_model(checkpoint, "cpu")
    base = replace(decode.Sampling(), **recommended_sampling(ckpt))
    examples, skipped = musicality.transposition_examples(data, "bass", tok.sample_rate, seconds, split)
    return net, tok, base, [e for e in examples if e["transpose"] in keys], skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.harmony_sampling", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a folder of works in twelve keys (python -m songs.corpus)")
    p.add_argument("--split", default="validation")
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="run these candidates only")
    p.add_argument("--keys", type=int, nargs="+", default=[0, 3, 6, 9],
                   help="the transpositions (0-11) whose contexts are used (default: four of the twelve)")
    p.add_argument("--out", default="results/harmony-sampling.json")
    args = p.parse_args(argv)
    net, tok, base, examples, skipped = validation_bass(args.checkpoint, args.data, args.split, args.keys,
                                                        args.seconds)
    read = (examples, skipped)
    rows = {}
    for name in args.only or CANDIDATES:
        sampling, made = replace(base, **CANDIDATES[name]), []

        def generate(contexts, instruments):
            made.extend(generate_stems(net, tok, contexts, instruments, sampling, 0, args.seconds, 16, True, name))
            return made
        r = musicality.transposition_test(args.data, "bass", generate, tok.sample_rate, args.seconds, args.split,
                                          0, examples=read)
        pieces = [e["piece"] for e in r["examples"]]
        share = musicality.harmonic_shares({"generated": made}, pieces, tok.sample_rate)["generated"]
        rows[name] = {"sampling": asdict(sampling),
                      "key": {k: r["generated"][k] for k in ("mean", "lo", "hi")}, **r["generated"]["harmony"],
                      "real": {"key": r["real"]["mean"], **{k: v["mean"] for k, v in r["real"]["harmony"].items()}},
                      "n": r["n"], "pieces": len(set(pieces)), "harmonic_share": share}
        print(f"{name}: key {rows[name]['key']['mean']:.3f}, chords {rows[name]['chords']['mean']:.3f}, "
              f"movement {rows[name]['movement']['mean']:.3f}, harmonic share {share['mean']:.3f}", file=sys.stderr,
              flush=True)
    print("| sampling | key score | chords in time | movement | harmonic share |\n| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        cells = [f"{row[k]['mean']:.3f} [{row[k]['lo']:.3f}, {row[k]['hi']:.3f}]"
                 for k in ("key", "chords", "movement", "harmonic_share")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    real = next(iter(rows.values()))["real"]
    print(f"| real bass | {real['key']:.3f} | {real['chords']:.3f} | {real['movement']:.3f} | - |")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1, default=lambda v: list(v) if isinstance(v, tuple) else str(v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
