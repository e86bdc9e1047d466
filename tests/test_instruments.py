"""audio/instruments.py: the class table, the names a user types, a stem's class from Slakh's metadata."""
import pytest

from audio.instruments import (DRUMS, INSTRUMENTS, N_INSTRUMENTS, NULL_INSTRUMENT, SLAKH_LABELS, instrument_id,
                                  program_class, stem_class)


def test_instrument_classes_and_lookup():
    # the null instrument is the one id after the classes: the model's table has one entry more than the classes
    assert NULL_INSTRUMENT == len(INSTRUMENTS) == N_INSTRUMENTS - 1
    assert instrument_id("piano") == 0
    assert instrument_id("synth lead") == INSTRUMENTS.index("Synth Lead")
    assert instrument_id("strings-continued") == INSTRUMENTS.index("Strings (continued)")
    assert instrument_id("DRUMS") == 16
    for i, name in enumerate(INSTRUMENTS):
        assert instrument_id(name) == i
    with pytest.raises(ValueError, match="valid names: Piano, Chromatic Percussion"):
        instrument_id("kazoo")


# Slakh's class table (slakh-utils, midi_inst_values/general_midi_inst_0based): label -> GM programs.
SLAKH_TABLE = {"Piano": range(0, 8), "Chromatic Percussion": range(8, 16), "Organ": range(16, 24),
               "Guitar": range(24, 32), "Bass": range(32, 40), "Strings": range(40, 48),
               "Strings (continued)": range(48, 56), "Brass": range(56, 64), "Reed": range(64, 72),
               "Pipe": range(72, 80), "Synth Lead": range(80, 88), "Synth Pad": range(88, 96),
               "Sound Effects": range(96, 104), "Ethnic": range(104, 112), "Percussive": range(112, 119),
               "Sound effects": range(119, 128)}


def test_every_gm_program_gets_slakhs_class():
    for label, programs in SLAKH_TABLE.items():
        for p in programs:
            assert SLAKH_LABELS[program_class(p)] == label, p
            # metadata with the program decides by it, whatever the label says
            assert stem_class({"program_num": p, "inst_class": "Piano"}) == program_class(p)
    assert program_class(0, is_drum=True) == DRUMS == INSTRUMENTS.index("Drums")
    with pytest.raises(ValueError, match="outside 0-127"):
        program_class(128)


def test_slakh_labels_are_read_case_sensitively():
    assert sorted(SLAKH_LABELS) == sorted([*SLAKH_TABLE, "Drums"])  # one entry per label, no two alike
    for label in SLAKH_TABLE:
        assert stem_class({"inst_class": label}) == program_class(SLAKH_TABLE[label][0])
    assert stem_class({"inst_class": "Sound Effects"}) == instrument_id("synth effects") == 12
    assert stem_class({"inst_class": "Sound effects"}) == instrument_id("sound effects") == 15
    assert stem_class({"inst_class": "Drums", "is_drum": True}) == stem_class({"is_drum": True}) == 16
    assert stem_class({"inst_class": "kazoo"}) is None and stem_class({}) is None


def test_every_class_is_reachable_from_programs_and_labels():
    from_programs = {program_class(p) for p in range(128)} | {program_class(0, True)}
    from_labels = {stem_class({"inst_class": label}) for label in SLAKH_LABELS}
    assert from_programs == from_labels == set(range(len(INSTRUMENTS)))
    assert NULL_INSTRUMENT not in from_programs
