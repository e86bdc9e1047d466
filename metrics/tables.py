"""evaluate.py's results as Markdown: the protocol's and sweeps' tables (Tab. 1-3), the listening report's."""
from __future__ import annotations

from metrics import listening, mir, sweep

CHROMA_ROWS = ("generated", "real stems", "real stems, codec round trip")  # the listening report's chroma rows
TITLES = {"none": "Objective metrics", "guidance": "Tab. 1: guidance scales",
          "causal-bias": "Tab. 2: causal-bias weight w_s", "best-vs-naive": "Tab. 3: best vs naive sampling"}


def markdown_table(result: dict) -> str:
    """The result as Markdown: provenance lines, the paper-style table (each group against the first), the
    per-setting rows, and MIRDD per descriptor."""
    e = result["embedding"]
    lines = [f"# {TITLES[result['sweep']]}", "",
             f"- FAD embedding: {e['name']} at {e['sample_rate']} Hz ({e['note']})",
             f"- MIRDD: {result['mirdd']['note']}",
             f"- {result['protocol']['n']} examples from split '{result['protocol']['split']}' of "
             f"{result['protocol']['data']}, {result['protocol']['seconds']:g} s each, seed {result['protocol']['seed']}",
             *interval_lines(result),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), ""]
    fad_head = "FAD" if e["comparable_with_published_fad"] else f"FAD ({e['name']}, not comparable)"
    measures = [m for m in sweep.MEASURES if m in result["table"][0]]
    head = [fad_head, "MIRDD"] + [sweep.MEASURE_NAMES[m] for m in measures[2:]]
    base = result["table"][0]
    verdicts = len(result["table"]) > 1 and "intervals" in base
    lines += ["| setting | " + " | ".join(head) + (f" | against {base['group']} |" if verdicts else " |"),
              "| --- |" + " ---: |" * len(head) + (" --- |" if verdicts else "")]
    for g in result["table"]:
        against = [("(baseline)" if g is base else sweep.verdict(base, g))] if verdicts else []
        lines.append("| " + " | ".join([g["group"]] + [with_interval(g, m) for m in measures] + against) + " |")
    if len(result["rows"]) > len(result["table"]):
        lines += ["", "Every setting:", "", "| setting | " + " | ".join(head) + " |",
                  "| --- |" + " ---: |" * len(head)]
        lines += ["| " + " | ".join([r["label"]] + [with_interval(r, m) for m in measures]) + " |"
                  for r in result["rows"]]
    names = list(mir.DESCRIPTORS)
    lines += ["", "MIRDD per descriptor (KL):", "", "| setting | " + " | ".join(names) + " |",
              "| --- |" + " ---: |" * len(names)]
    lines += [f"| {r['label']} | " + " | ".join(f"{r['mirdd_per_descriptor'][n]:.3f}" for n in names) + " |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def with_interval(row: dict, measure: str) -> str:
    """A measure's value with its interval, "-" when it was not computed."""
    value, span = row.get(measure), row.get("intervals", {}).get(measure)
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{span[0]:.3f}, {span[1]:.3f}]" if span else "")


def interval_lines(result: dict) -> list[str]:
    """What the harmonic share, the alignment and the intervals are, or why there are none."""
    iv = result.get("intervals")
    if iv is None:
        return []
    lines = ["- harmonic share: energy 40-4000 Hz of a generated stem that HPSS calls harmonic, mean over stems; "
             "alignment: chroma key agreement of a generated stem with its own context minus with another song's "
             "(0: ignores the context), mean over examples"]
    if not iv["computed"]:
        return lines + [f"- no intervals and no alignment: the examples come from {iv['songs']} song (resampling "
                        "songs needs two or more)"]
    return lines + [
        f"- [lo, hi]: {iv['level']:.0%} interval from {iv['n_boot']} resamples of the {iv['songs']} songs (both "
        "populations take the same resampled songs; FAD and MIRDD are recomputed on each). FAD and MIRDD are "
        "biased by population size and a resample repeats clips, so their intervals show the spread over songs "
        "and need not hold the point value. Overlapping intervals: cannot be told apart at this size"]


def listening_markdown(report: dict) -> str:
    """The listening report as Markdown: the NLL table, the verdict, the chroma table, the notes-vs-noise table
    and, when run, the transposition table."""
    lines = ["| level 0, whole target masked | NLL (nats) | top-1 acc |", "| --- | --- | --- |"]
    lines += [f"| {k.replace('_', ' ')} | {v['nll']:.3f} | {v['acc']:.3f} |" for k, v in report["conditions"].items()]
    lines += [f"| gain {k.replace('_', ' ')} | {g['mean']:.3f} [{g['lo']:.3f}, {g['hi']:.3f}] | |"
              for k, g in report["gains"].items()]
    lines += ["", report["verdict"]]
    if report.get("other_song_fallbacks"):
        lines.append(f"({report['other_song_fallbacks']} pairs took another song's context holding their target's "
                     "class: no other song's context lacked it)")
    chroma = report["chroma"]
    lines += ["", f"Chroma agreement of {chroma['n']} pitched stems with their own context and with another song's "
              "(paired gain, 95 % bootstrap interval over songs):", "",
              "| stems | measure | own context | other song's | gain |", "| --- | --- | --- | --- | --- |"]
    for who in CHROMA_ROWS:
        for m in listening.CHROMA_MEASURES:
            r = chroma[who][m]
            lines.append(f"| {who} | {m} | {r['own']:.3f} | {r['other']:.3f} | {r['gain']:.3f} "
                         f"[{r['lo']:.3f}, {r['hi']:.3f}] |")
    if chroma[CHROMA_ROWS[0]].get("other_song_fallbacks"):
        lines.append(f"\n({chroma[CHROMA_ROWS[0]]['other_song_fallbacks']} stems took another song's context "
                     "holding their class: none lacked it)")
    lines += notes_markdown(report["notes"])
    for r in report.get("transposition", {}).values():
        lines += transposition_markdown(r)
    if report.get("plot"):
        lines += ["", f"Spectrograms of a few examples: {report['plot']}"]
    for cls, r in report.get("transposition", {}).items():
        if r.get("plot"):
            lines += ["", f"Transposition test, {cls}, as a picture (each part's chroma in every key rolled back into "
                          f"the written key: straight columns follow the key, diagonals ignore it): {r['plot']}"]
    return "\n".join(lines) + "\n"


def notes_markdown(notes: dict) -> list[str]:
    """The notes-vs-noise table: harmonic share of each population, FAD of each against the real stems."""
    e = notes["embedding"]
    lo, hi = notes["harmonic_band_hz"]
    fad_head = "FAD vs real stems" + ("" if e["comparable_with_published_fad"] else f" ({e['name']}, not comparable)")
    lines = ["", f"Notes or noise: harmonic share (energy {lo:g}-{hi:g} Hz that HPSS with margin "
                 f"{notes['hpss_margin']:g} calls harmonic; 95 % song-bootstrap interval) and FAD against the real "
                 "stems:", "", f"| stems | harmonic share | {fad_head} |", "| --- | --- | --- |"]
    for name, h in notes["harmonic_share"].items():
        distance = notes["fad_against_real"].get(name)
        lines.append(f"| {name} | {h['mean']:.3f} [{h['lo']:.3f}, {h['hi']:.3f}] | "
                     f"{'-' if distance is None else f'{distance:.3f}'} |")
    return lines


def harmony_markdown(r: dict) -> list[str]:
    """The same parts followed in time (metrics/harmony.py, beat-long frames): key fit, chord fit in time and
    movement, each with its piece-bootstrap interval."""
    lines = ["", "Following the harmony in time (metrics/harmony.py; beat-long frames): key = the part's chroma against "
                 "the context's at the right shift minus the 11 others; chords in time = each frame against the same "
                 "frame of the context minus its other frames (0: a drone, a part that ignores the context or "
                 "follows only its key); movement = share of consecutive frames whose strongest pitch class "
                 "changes:", "", "| part | key | chords in time | movement |", "| --- | --- | --- | --- |"]
    for who, label in PARTS:
        h = r.get(who, {}).get("harmony")
        if not h:
            continue
        cells = ["-" if h[k] is None else f"{h[k]['mean']:.3f} [{h[k]['lo']:.3f}, {h[k]['hi']:.3f}]"
                 for k in ("key", "chords", "movement")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


PARTS = (("generated", "generated"), ("real", "real part (ceiling)"), ("round trip", "real part, codec round trip"),
         ("random finer levels", "real part, round trip with random finer levels"))


def transposition_markdown(r: dict) -> list[str]:
    """One class's transposition test: generated and real parts' scores and right-shift counts."""
    lines = ["", f"Transposition test, {r['instrument']}: {r['n']} contexts from {r['pieces']} "
                 f"piece{'s' if r['pieces'] != 1 else ''} "
                 f"({r['transpositions']} piece-transpositions); score = chroma correlation with the context at the "
                 "right shift minus the mean over the 11 wrong ones (0: ignores the key; 95 % piece-bootstrap "
                 "interval); moves with the key = mean correlation between two keys' chroma of the part rolled back "
                 "into the written key, per chunk (1: moves exactly with the key; -1/11: one chroma in every key; "
                 "0: unrelated to the key):", "", "| part | score | right shift best | moves with the key |",
             "| --- | --- | --- | --- |"]
    for who, label in PARTS:
        if who not in r:
            continue
        x = r[who]
        c = x.get("consistency")
        moves = "-" if not c else (f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] "
                                   f"({c['chunks']} chunk{'s' if c['chunks'] != 1 else ''})")
        lines.append(f"| {label} | {x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}] | {x['right_shift_best']} of "
                     f"{x['n']} | {moves} |")
    lines += harmony_markdown(r)
    if "tokens" in r:
        t = r["tokens"]
        lines.append(f"\nIn tokens (no sampling): the real part's level-0 NLL is {t['gain']['mean']:.3f} nats "
                     f"[{t['gain']['lo']:.3f}, {t['gain']['hi']:.3f}] lower under its own key's context than under "
                     f"the 11 others' on average; its own key's context is best for {t['own_best']} of {t['n']} "
                     f"(mean rank {t['mean_rank']:.2f}, chance {t['chance_rank']:.1f}; {t['chunks']} chunks in all "
                     "twelve keys)")
    if r["pieces"] < 2:
        lines.append("\n(one piece only: its interval, from resampling pieces, says nothing)")
    if r["skipped"]:
        lines.append("\n(skipped tracks: " + ", ".join(f"{n} {k}" for k, n in sorted(r["skipped"].items())) + ")")
    return lines
