"""The instrument classes (Sec. 3): Slakh's 17 classes and the null entry, the names a user types, and how a
stem's class is read from its metadata.

The paper conditions on "18 General MIDI instrument categories"; we read them as Slakh's 17 `inst_class`
values plus a null entry for a dropped instrument condition (NOTES.md, section 1).
"""
from __future__ import annotations

import torch

# The 17 instrument classes, in the order of Slakh's class table (slakh-utils' general_midi_inst_0based):
# the GM program families, then Drums. Our names are the GM family names, which a user can type. Slakh's own
# labels differ for the two effects classes only, and only in case:
#   id 12 "Synth Effects": GM programs 96-103 (FX 1-8); Slakh labels them "Sound Effects";
#   id 15 "Sound Effects": GM programs 119-127 (Reverse Cymbal .. Gunshot); Slakh labels them "Sound effects".
# Slakh moves program 119 (Reverse Cymbal) from GM's Percussive family into its "Sound effects" class.
INSTRUMENTS: list[str] = [
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Strings (continued)",
    "Brass", "Reed", "Pipe", "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive",
    "Sound Effects", "Drums",
]
SYNTH_EFFECTS, SOUND_EFFECTS, DRUMS = 12, 15, 16
# Slakh's inst_class label of each id (read case-sensitively: "Sound Effects" and "Sound effects" differ).
SLAKH_LABELS: list[str] = [*INSTRUMENTS[:SYNTH_EFFECTS], "Sound Effects", *INSTRUMENTS[SYNTH_EFFECTS + 1:SOUND_EFFECTS],
                           "Sound effects", "Drums"]
# Classes without a definite pitch: the audio-level listening check (chroma) generates pitched stems only.
UNPITCHED = frozenset(INSTRUMENTS.index(n) for n in ("Drums", "Percussive", "Sound Effects", "Synth Effects"))
NULL_INSTRUMENT = len(INSTRUMENTS)  # 17: the entry used when the instrument condition is dropped
N_INSTRUMENTS = len(INSTRUMENTS) + 1  # 18 embedding entries (Sec. 3)


def _norm_name(name: str) -> str:
    """Lower-case a class name and drop everything but letters and digits ("Strings (continued)" -> "stringscontinued")."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


_LOOKUP = {_norm_name(n): i for i, n in enumerate(INSTRUMENTS)}
_LOOKUP.update({"ensemble": 6, "drum": DRUMS, "drumkit": DRUMS, "synthfx": SYNTH_EFFECTS, "soundfx": SOUND_EFFECTS,
                "sfx": SOUND_EFFECTS})


def instrument_id(name: str) -> int:
    """Index into INSTRUMENTS of a user-spelled class name (case, spaces, dashes and brackets ignored).

    "synth effects" is GM programs 96-103 (Slakh's label "Sound Effects"); "sound effects" is programs
    119-127 (Slakh's "Sound effects").
    """
    key = _norm_name(str(name))
    if key in _LOOKUP:
        return _LOOKUP[key]
    raise ValueError(f"unknown instrument {name!r}; valid names: " + ", ".join(INSTRUMENTS))


def program_class(program: int, is_drum: bool = False) -> int:
    """The class id of a GM program (0-127) as Slakh's table assigns it; Drums for a drum track.

    Eight programs per family, as in GM, except that Slakh puts program 119 (Reverse Cymbal) with the sound
    effects 120-127 rather than with Percussive.
    """
    if is_drum:
        return DRUMS
    program = int(program)
    if not 0 <= program <= 127:
        raise ValueError(f"GM program {program} is outside 0-127")
    return SOUND_EFFECTS if program == 119 else program // 8


def stem_class(info: dict) -> int | None:
    """A stem's class from its metadata: the drum flag, else the program number (Slakh's table), else Slakh's
    label (case-sensitive), else a class name as a user spells it; None when none of them gives one.

    For your own stems a label like "piano" is enough; the two effects classes must then be spelled as in
    INSTRUMENTS ("Synth Effects", "Sound Effects") or as Slakh labels them, and an all-lower-case "sound
    effects" is taken as GM's sound effects (119-127).
    """
    if info.get("is_drum") is True:
        return DRUMS
    program = info.get("program_num")
    if isinstance(program, int) and not isinstance(program, bool) and 0 <= program <= 127:
        return program_class(program)
    label = info.get("inst_class")
    if not isinstance(label, str):
        return None
    if label in SLAKH_LABELS:
        return SLAKH_LABELS.index(label)
    try:
        return instrument_id(label)
    except ValueError:
        return None


def class_matrix(class_lists) -> torch.Tensor:
    """Bool [N, len(INSTRUMENTS)]: row i is True at the class ids in class_lists[i] (e.g. a context's stems)."""
    out = torch.zeros(len(class_lists), len(INSTRUMENTS), dtype=torch.bool)
    for i, classes in enumerate(class_lists):
        out[i, [int(k) for k in classes]] = True
    return out
