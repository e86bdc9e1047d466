"""Objective evaluation: FAD, MIRDD and the paper's protocols and ablations (Sec. 3.1-3.2).

    python evaluate.py --checkpoint runs/default/ckpt.pt --data DATA --out results/eval
    python evaluate.py ... --sweep guidance        # Tab. 1: grid of lambda_a, lambda_i, grouped as the paper
    python evaluate.py ... --sweep causal-bias     # Tab. 2: w_s in 0, 0.1, 0.2, 0.5
    python evaluate.py ... --sweep best-vs-naive   # Tab. 3
    python evaluate.py ... --sweep guidance --resume   # a stopped sweep: keep its finished settings
    python evaluate.py ... --embedding vggish --vggish-weights vggish.pth   # the paper's FAD embedding

Protocol (Sec. 3.2): N examples drawn from a held-out split as training pairs are (a context-mix and a
random target category). The model's stem for each goes into one population, the real stem of that category
into the other. FAD compares the two populations of isolated stems; MIRDD compares the populations of stems
summed with their own context-mix. Every sampling setting of a sweep uses the same examples and the same
per-example seeds, and the real side is analysed once. Each setting's row also holds the harmonic share of the
generated stems and their key alignment with their own context against another song's, and every measure has
a 95 % interval from resampling songs (metrics/sweep.py); the table says, per group, which measures the first
group's intervals overlap (cannot be told apart at this size). After each setting the finished rows go to
OUT/<name>.partial.json; `--resume` continues from there with the same protocol.

FAD (Sec. 3.1, [20], fad.py) is the Frechet distance between Gaussians fitted to the embeddings of the two
populations. The paper used VGGish; we run VGGish in torch from a local weights file when given one
(`--vggish-weights`, no download), and otherwise an offline log-mel statistics embedding whose scores are
labelled, in every output, as not comparable with published FAD. MIRDD (mir.py) takes its note descriptors
from a learned transcriber (notes/transcriber.py: basic-pitch's model, run with onnxruntime) and the others from librosa analysers
(mir.py's docstring says how they differ from the paper's learned models), so it is not comparable either.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import asdict, replace

import numpy as np
import scipy
import torch

import codec as codec_lib
import data
import decode
from metrics import fad, listening, mir, musicality, pictures, sweep
from notes import transcriber
from metrics.sweep import (EvaluateError, generate_stems, group_rows, sweep_settings,
                           write_text_atomic)
from metrics.tables import CHROMA_ROWS, listening_markdown, markdown_table
from audio import files as audio_files
from training import checkpoint, pool
from cli.common import USER_ERROR, DefaultsHelp, pick_device, source_commit
from audio.instruments import INSTRUMENTS, UNPITCHED, class_matrix, instrument_id

LISTENING_BATCH = 16  # the listening report's equal-length pitched examples, decoded together


# ---------------------------------------------------------------------------------------------------------
# Listening (listening.py): the context's worth in nats, and in the chroma of generated stems

def pitched_examples(data_root: str, split: str, n: int, seconds: float, sample_rate: int, seed: int):
    """Up to n (context [S], real stem [S], instrument, song, context classes) examples with a pitched target,
    one per song."""
    ds = data.StemPairDataset(data_root, split, data.PairDraw(sample_rate, seconds), seed=seed, verbose=False)
    rng, out, seen = np.random.default_rng([seed, 7]), [], set()
    for seg in rng.permutation(len(ds.segments)):
        song = ds.segment_song[seg]
        if song in seen:
            continue
        pitched = [x for x in ds.segment_pairs(int(seg), 8, rng) if x[2] not in UNPITCHED]
        if pitched:
            c, t, k, classes = pitched[0]
            out.append((c.numpy(), t.numpy(), int(k), song, classes))
            seen.add(song)
        if len(out) == n:
            break
    if len(out) < 2:
        raise EvaluateError(f"--data {data_root} --split {split}: fewer than two songs with a pitched stem")
    return out


def run_listening(args, net, tok, seconds: float, progress: bool, sampling: decode.Sampling,
                  embedding=None) -> dict:
    """The token-level report on held-out pairs, the paired chroma check and the notes-vs-noise table on
    pitched stems generated with `sampling`; with args.transposition the transposition test, with args.plot
    OUT/listening.png."""
    pairs = pool.split_pool(tok, args.data, args.split, seconds, max(args.n, 256), args.seed, progress,
                            "tokenising pairs", verbose=False)
    report = listening.listening_report(net, pairs, frame_rate=tok.frame_rate, seed=args.seed)
    examples = pitched_examples(args.data, args.split, args.audio_n, seconds, tok.sample_rate, args.seed)

    def generate(contexts, instruments):
        return generate_stems(net, tok, contexts, instruments, sampling, args.seed, seconds, LISTENING_BATCH,
                              progress, "generate pitched stems")

    contexts, reals = [e[0] for e in examples], [e[1] for e in examples]
    instruments, songs = [e[2] for e in examples], [e[3] for e in examples]
    held = class_matrix([e[4] for e in examples])
    stems = generate(contexts, instruments)
    g = torch.Generator().manual_seed(args.seed)
    populations = {"generated": stems, "real stems": reals,
                   "real stems, codec round trip": [musicality.round_trip(tok, t) for t in reals],
                   "real stems, round trip with random finer levels": [musicality.round_trip_random_fine(tok, t, g)
                                                                       for t in reals]}
    report["chroma"] = {who: listening.chroma_check(populations[who], contexts, songs, tok.sample_rate, args.seed,
                                                    instruments, held) for who in CHROMA_ROWS}
    report["chroma"].update({"n": len(examples), "instruments": [INSTRUMENTS[k] for k in instruments],
                             "sampling": asdict(sampling)})
    report["notes"] = notes_vs_noise(populations, songs, tok.sample_rate, args.seed,
                                     embedding or fad.load_embedding("logmel"))
    if args.transposition:
        report["transposition"] = {}
        for cls in args.transposition_classes:  # the folder is read once per class, for both tests
            read = musicality.transposition_examples(args.transposition, cls, tok.sample_rate, seconds,
                                                     args.transposition_split)
            report["transposition"][cls] = {
                **musicality.transposition_test(args.transposition, cls, generate, tok.sample_rate, seconds,
                                                args.transposition_split, args.seed, tok, examples=read),
                "tokens": musicality.key_nll_test(net, tok, args.transposition, cls, seconds,
                                                  args.transposition_split, args.seed, examples=read)}
    if args.plot:
        os.makedirs(args.out, exist_ok=True)
        for cls, result in report.get("transposition", {}).items():
            whos = ("context", "real", "round trip", "generated")
            result["plot"] = pictures.plot_transposition(os.path.join(args.out, transposition_plot_file(cls)),
                                                           result["examples"], whos, args.plot_n)
        rows = [{"context": c, "generated": s, "real": t, "label": f"{INSTRUMENTS[k]}, song {song}"}
                for c, s, t, k, song in list(zip(contexts, stems, reals, instruments, songs))[:args.plot_n]]
        report["plot"] = pictures.plot_examples(os.path.join(args.out, PLOT_FILE), rows, tok.sample_rate)
        report["harmony_plot"] = pictures.plot_harmony(
            os.path.join(args.out, HARMONY_PLOT_FILE),
            [{"label": r["label"], "context": r["context"], "parts": {"real": r["real"], "generated": r["generated"]}}
             for r in rows], tok.sample_rate)
    return report


REFERENCE = "real stems"
PLOT_FILE = "listening.png"
HARMONY_PLOT_FILE = "harmony.png"   # --plot: the context's chords over time and the parts' notes on them


def transposition_plot_file(cls: str) -> str:
    """--plot's transposition picture for one class: transposition-<class>.png."""
    return f"transposition-{cls}.png"


def notes_vs_noise(populations: dict, songs: list, sample_rate: int, seed: int, embedding) -> dict:
    """Harmonic share of each population (song-bootstrap intervals) and FAD of each other population against
    the real stems."""
    real = fad.gaussian_fit(fad.embed_population(embedding, populations[REFERENCE], sample_rate), "real stems")
    distances = {}
    for name, waves in populations.items():
        if name != REFERENCE:
            emb = fad.embed_population(embedding, waves, sample_rate)
            distances[name] = fad.frechet_distance(*real, *fad.gaussian_fit(emb, name))
    return {"harmonic_share": musicality.harmonic_shares(populations, songs, sample_rate, seed),
            "fad_against_real": distances, "embedding": fad.embedding_record(embedding),
            "harmonic_band_hz": list(musicality.HARMONIC_BAND), "hpss_margin": musicality.HPSS_MARGIN}


# ---------------------------------------------------------------------------------------------------------
# Results

def versions() -> dict:
    """Tool versions recorded with every score."""
    import librosa
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "scipy": scipy.__version__, "librosa": librosa.__version__}
    for package in ("basic-pitch", "onnxruntime"):  # MIRDD's transcriber
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    out["stemgen_commit"] = source_commit()
    return out


def output_paths(out_dir: str, kind: str, listen: bool = False) -> tuple[str, str]:
    stem = "listening" if listen else "results" if kind == "none" else f"sweep-{kind}"
    return os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")


# ---------------------------------------------------------------------------------------------------------
# CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="FAD and MIRDD of a StemGen checkpoint with the paper's protocol (Sec. 3.2) and ablations "
                    "(Tab. 1-3). Writes JSON and a Markdown table.",
        formatter_class=DefaultsHelp)
    p.add_argument("--checkpoint", help="model checkpoint (default: runs/default/best.pt, else "
                                        f"{checkpoint.DEFAULT_CHECKPOINT}, else the shipped model)")
    p.add_argument("--data", required=True, help="Slakh-layout dataset folder (e.g. made by python -m songs.synth)")
    p.add_argument("--split", default="test", help="held-out split the examples come from")
    p.add_argument("--n", type=int, default=400, help="number of examples (paper: 400)")
    p.add_argument("--seconds", type=float, default=None,
                   help=f"example length; default: the checkpoint's training crop, "
                        f"else {decode.DEFAULT_WINDOW_SECONDS:g} s")
    p.add_argument("--out", required=True, help="folder for results.json / results.md (or sweep-*.json/md)")
    p.add_argument("--force", action="store_true",
                   help="overwrite existing result files; a sweep starts over, ignoring a partial file of finished "
                        "settings")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that stopped: keep the finished settings' rows saved in "
                        "OUT/results.partial.json or OUT/sweep-NAME.partial.json (written after every setting) and "
                        "generate only the others; refused, naming what differs, when the protocol (data, split, "
                        "n, seconds, seed, checkpoint and its step, codec, embedding, kl smoothing, n-boot, the "
                        "drawn examples) is not the saved one. Without it, an existing partial file stops the run "
                        "unless --force is given. The file is removed once the results are written")
    p.add_argument("--n-boot", type=int, default=sweep.N_BOOT,
                   help="song resamples for every measure's 95 %% interval")
    p.add_argument("--sweep", default="none", choices=["none", "guidance", "causal-bias", "best-vs-naive"],
                   help="which table to produce; none = one run with the paper's best sampling")
    add_listening_flags(p)
    p.add_argument("--scales", default="2,3,4", help="guided values of lambda for --sweep guidance")
    p.add_argument("--ws-values", default="0,0.1,0.2,0.5", help="w_s values for --sweep causal-bias")
    p.add_argument("--fad-framing", default=fad.DEFAULT_FRAMING, choices=list(fad.FRAMINGS),
                   help="how clips become VGGish examples for FAD: fad-tool (the FAD reference tool's: clip "
                        "normalised, 1 s windows every 0.5 s; default) or vggish (waveform_to_examples' "
                        "non-overlapping 0.96 s examples)")
    p.add_argument("--embedding", default="logmel", choices=["logmel", "vggish"],
                   help="FAD embedding: logmel is offline and NOT comparable with published FAD")
    p.add_argument("--vggish-weights", default=None, help="local VGGish state dict (torchvggish names)")
    p.add_argument("--chroma-gate", type=_gate, default=listening.CHROMA_GATE_DB, metavar="DB",
                   help="chroma measures (alignment, key and chord agreement, transposition test): frames more than "
                        "DB below a clip's loudest count as silence")
    p.add_argument("--kl-smoothing", type=float, default=1.0,
                   help="pseudo-count added to every bin of each descriptor's support before MIRDD's KL")
    decode.add_sampling_flags(p.add_argument_group(
        "sampling of --listening's stems, as generate.py (defaults: the paper's best setting, with the knobs "
        "the checkpoint recommends applied over it); the sweeps take --steps and the temperatures from here "
        "and set guidance and eq. 1 per row"), naive_and_seed=False)
    p.add_argument("--seed", type=int, default=0, help="seed for the examples and for sampling")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda[:N], mps")
    p.add_argument("--codec-weights", metavar="PATH",
                   help="where the checkpoint's codec weights are on this machine, if its stored path is not")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def add_listening_flags(p: argparse.ArgumentParser) -> None:
    """--listening and the flags of its report."""
    p.add_argument("--listening", action="store_true",
                   help="instead of FAD/MIRDD: does the model listen? Level-0 NLL with the true, a dropped, another "
                        "song's and a shifted context on max(--n, 256) held-out pairs; the chroma of "
                        "--audio-n generated pitched stems against their own and another song's context; and "
                        "whether they sound like notes (harmonic share, FAD) beside the real stems, their codec "
                        "round trip and the round trip with random finer levels")
    p.add_argument("--audio-n", type=int, default=32, help="--listening: pitched stems to generate (one per song)")
    p.add_argument("--transposition", metavar="DIR",
                   help="--listening: also run the transposition test on DIR, a Slakh-layout folder of transposed "
                        "renderings whose metadata.yaml files say corpus: {piece, transpose}")
    p.add_argument("--transposition-classes", nargs="+", default=["bass"], metavar="CLASS",
                   help="--transposition: the classes to generate, one test each")
    p.add_argument("--transposition-split", default="all", choices=["all", "train", "validation", "test"],
                   help="--transposition: the split of DIR to use (all, train, validation or test)")
    p.add_argument("--plot", action="store_true",
                   help=f"--listening: draw CQT spectrograms of context, generated and real stem for a few examples "
                        f"to OUT/{PLOT_FILE}, and the context's pitch classes over time with each part's strongest "
                        f"one to OUT/{HARMONY_PLOT_FILE}; with --transposition also each class's chroma in every key, rolled "
                        f"back into the written key, to OUT/{transposition_plot_file('CLASS')}")
    p.add_argument("--plot-n", type=int, default=4, help="--plot: how many examples (and transposed chunks)")


def _gate(text: str) -> float:
    """--chroma-gate: a level in dB at or below 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a level in dB at or below 0 (e.g. -60)") from None
    if not -np.inf < value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the gate is a level below the clip's loudest frame, at or "
                                         "below 0 dB")
    return value


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EvaluateError(f"{flag} {text!r}: give comma-separated numbers, e.g. 2,3,4") from None


def check_run(args) -> tuple[str, str]:
    """Refuse bad flags and existing outputs before any work; returns the (JSON, Markdown) output paths."""
    if args.n < 2:
        raise EvaluateError("--n must be at least 2 (FAD fits a Gaussian to each population)")
    if args.n_boot < 1:
        raise EvaluateError("--n-boot must be at least 1")
    json_path, md_path = output_paths(args.out, args.sweep, args.listening)
    if args.resume and (args.listening or args.force):
        raise EvaluateError("--resume continues a sweep's finished settings: not with --listening, and not with "
                            "--force (which starts over)")
    partial = sweep.partial_path(json_path)
    if not args.listening and os.path.exists(partial) and not (args.resume or args.force):
        raise EvaluateError(f"a stopped run's finished settings are in {partial}: pass --resume to continue it, or "
                            "--force to start over")
    if args.listening and args.transposition and not os.path.isdir(args.transposition):
        raise EvaluateError(f"--transposition {args.transposition}: folder not found")
    if args.listening and args.transposition:
        for cls in args.transposition_classes:
            instrument_id(cls)   # an unknown class name fails now, with the valid names, not after generation
    if args.plot and args.plot_n < 1:
        raise EvaluateError("--plot-n must be at least 1")
    plot_path = ([os.path.join(args.out, f) for f in (PLOT_FILE, HARMONY_PLOT_FILE)] if args.listening and args.plot
                 else [])
    if plot_path and args.transposition:
        plot_path += [os.path.join(args.out, transposition_plot_file(c)) for c in args.transposition_classes]
    for path in [json_path, md_path] + plot_path:
        if os.path.exists(path) and not args.force:
            raise EvaluateError(f"output exists: {path} (pass --force to overwrite, or choose another --out)")
    if not args.listening:
        transcriber.check_transcriber()  # before hours of generation, not after
    return json_path, md_path


def run(args) -> dict:
    json_path, md_path = check_run(args)
    gate, listening.CHROMA_GATE_DB = listening.CHROMA_GATE_DB, args.chroma_gate  # this run's chroma measures
    try:
        return measure(args, json_path, md_path)
    finally:
        listening.CHROMA_GATE_DB = gate


def measure(args, json_path: str, md_path: str) -> dict:
    """run's work once its flags are checked: the listening report or the protocol, written to both files."""
    embedding = fad.load_embedding(args.embedding, args.vggish_weights, "cpu", framing=args.fad_framing)
    device = pick_device(args.device)
    if isinstance(embedding, fad.VGGishEmbedding):
        embedding.net.to(device)
        embedding.device = device
    if args.checkpoint is None:
        args.checkpoint, why = checkpoint.default_checkpoint()
        print(f"checkpoint: {args.checkpoint} ({why}; --checkpoint chooses another)", file=sys.stderr)
    net, tok, ckpt = checkpoint.load_model(args.checkpoint, device, args.codec_weights)
    seconds = args.seconds or checkpoint.checkpoint_window_seconds(ckpt) or decode.DEFAULT_WINDOW_SECONDS
    recommended = checkpoint.recommended_sampling(ckpt)
    sampling, line = decode.resolve_sampling(args, recommended)  # --listening's stems: generate.py's rule
    if line:
        print(line, file=sys.stderr)
    base = replace(decode.Sampling(), steps=sampling.steps, temperature=sampling.temperature,
                   fine_temperature=sampling.fine_temperature)    # the sweeps set guidance and eq. 1 per row
    settings = sweep_settings(args.sweep, base, _floats(args.scales, "--scales"), _floats(args.ws_values, "--ws-values"))
    progress = not args.no_progress
    if args.listening:
        result = {"listening": run_listening(args, net, tok, seconds, progress, sampling, embedding),
                  "protocol": {"data": os.path.abspath(args.data), "split": args.split, "seconds": seconds,
                               "seed": args.seed, "chroma_gate_db": args.chroma_gate,
                               "checkpoint": os.path.abspath(args.checkpoint), "step": ckpt.get("step")},
                  "versions": versions()}
        markdown = listening_markdown(result["listening"])
    else:
        result = run_protocol(args, settings, net, tok, ckpt, seconds, embedding, progress)
        markdown = markdown_table(result)
    write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(md_path, markdown)
    if not args.listening and os.path.exists(sweep.partial_path(json_path)):
        os.remove(sweep.partial_path(json_path))   # every row is in the result now
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return result


def run_protocol(args, settings: list, net, tok, ckpt: dict, seconds: float, embedding, progress: bool) -> dict:
    """The protocol (Sec. 3.2) under every sampling setting of the sweep: one row per setting, the paper-style
    table of group means, and what the scores were made with. With --resume, the settings finished in the
    partial file are kept (checked against this protocol before any analysis)."""
    examples, songs = sweep.draw_examples_and_songs(args.data, args.split, args.n, seconds, tok.sample_rate,
                                                    args.seed)
    protocol = {"data": os.path.abspath(args.data), "split": args.split, "n": args.n, "seconds": seconds,
                "seed": args.seed, "checkpoint": os.path.abspath(args.checkpoint), "step": ckpt.get("step"),
                "codec": type(tok).__name__, "codec_sample_rate": tok.sample_rate,
                "instruments": [INSTRUMENTS[int(i)] for _, _, i in examples], "songs": songs}
    identity = {"sweep": args.sweep, **protocol, "embedding": fad.embedding_record(embedding),
                "kl_smoothing": args.kl_smoothing, "n_boot": args.n_boot,
                "chroma_gate_db": args.chroma_gate}
    partial = sweep.partial_path(output_paths(args.out, args.sweep)[0])
    done = sweep.resumed_rows(partial, identity) if args.resume and os.path.exists(partial) else []
    if args.resume and not os.path.exists(partial):
        print(f"--resume: no {partial} yet, every setting is computed", file=sys.stderr)
    reference = sweep.Reference(examples, tok.sample_rate, embedding, progress, songs, args.n_boot, args.seed)

    def generate(sampling, label, on_examples):
        return generate_stems(net, tok, [c for c, _, _ in examples], [k for _, _, k in examples], sampling,
                              args.seed, checkpoint.checkpoint_window_seconds(ckpt), sweep.PROTOCOL_BATCH,
                              progress=progress, desc=f"generate {label}", on_examples=on_examples)

    rows = sweep.run_rows(settings, generate, reference, identity, partial, done, args.kl_smoothing, progress)
    n_songs = len(set(songs))
    return {
        "sweep": args.sweep,
        "protocol": protocol,
        "embedding": fad.embedding_record(embedding),
        "chroma_gate_db": args.chroma_gate,
        "mirdd": {"analysis_sample_rate": mir.ANALYSIS_SR, "kl": "KL(real || generated) per descriptor, mean",
                  "kl_smoothing": args.kl_smoothing, "descriptors": list(mir.DESCRIPTORS),
                  "note": "note descriptors from basic-pitch's learned transcriber (ONNX), the others from librosa "
                          "signal-processing analysers (mir.py), not the paper's models; NOT comparable with "
                          "published MIRDD"},
        "intervals": {"level": sweep.LEVEL, "n_boot": args.n_boot, "songs": n_songs, "seed": args.seed,
                      "computed": n_songs >= 2, "method": "percentiles over resamples of songs with replacement "
                      "(both populations take the resampled songs' examples; FAD and MIRDD recomputed on each)"},
        "versions": versions(),
        "table": group_rows(rows),
        "rows": sweep.without_draws(rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (EvaluateError, audio_files.AudioError, codec_lib.CodecUnavailable,
            data.DatasetError, transcriber.TranscriberUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        partial = sweep.partial_path(output_paths(args.out, args.sweep, args.listening)[0])
        kept = (f"; the finished settings are kept in {partial} (rerun with --resume to continue)"
                if not args.listening and os.path.exists(partial) else "")
        print(f"interrupted: no results written{kept}", file=sys.stderr)
        return 130
    print(listening_markdown(result["listening"]) if args.listening else markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
