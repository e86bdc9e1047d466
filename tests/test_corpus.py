"""corpus.py: real works from music21's corpus rendered into the Slakh layout, split by work, Bach reserved."""
import os

import numpy as np
import pretty_midi
import pytest
import yaml

from songs import corpus
import data
from audio import slakh

pytest.importorskip("music21")


def test_bach_is_never_listed_and_asking_for_it_is_refused():
    root = corpus.corpus_root()
    works = corpus.list_works(root)
    assert works and not any(w.split(os.sep)[0] == "bach" for w in works)
    assert any(w.startswith("palestrina") for w in works)
    with pytest.raises(corpus.CorpusError, match="reserved"):
        corpus.list_works(root, ["bach", "haydn"])


def test_movements_of_one_work_share_a_name_and_so_a_split(tmp_path):
    mass = "!!!COM: someone\n!!!OPR: Missa Brevis\n!!!OTL: Kyrie\n**kern\n4c\n*-\n"
    for name in ("Kyrie_07.krn", "Agnus_I_99.krn"):
        (tmp_path / "palestrina").mkdir(exist_ok=True)
        (tmp_path / "palestrina" / name).write_text(mass)
    a = corpus.work_name(str(tmp_path), os.path.join("palestrina", "Kyrie_07.krn"))
    b = corpus.work_name(str(tmp_path), os.path.join("palestrina", "Agnus_I_99.krn"))
    assert a == b == "palestrina/Missa Brevis"
    assert corpus.work_name(str(tmp_path), os.path.join("haydn", "opus1no1", "movement3.mxl")) == "haydn/opus1no1"
    splits = {corpus.work_split(f"work {i}") for i in range(200)}
    assert splits == {"train", "validation", "test"}
    assert corpus.work_split("palestrina/Missa Brevis") == corpus.work_split("palestrina/Missa Brevis")


def test_all_transpositions_keep_the_instruments_and_move_every_note(tmp_path):
    out, counts = corpus.render_corpus(str(tmp_path / "t"), folders=["palestrina"], max_works=1, transpositions="all",
                                       seconds=2.0, chunks=1, seed=0, workers=1, progress=False)
    tracks = sorted(d for s in ("train", "validation", "test") if os.path.isdir(os.path.join(out, s))
                    for d in [os.path.join(out, s, t) for t in os.listdir(os.path.join(out, s))])
    assert counts["tracks"] == len(tracks) == 12
    metas = [yaml.safe_load(open(os.path.join(t, "metadata.yaml"))) for t in tracks]
    assert sorted(m["corpus"]["transpose"] for m in metas) == list(range(12))
    assert len({m["corpus"]["piece"] for m in metas}) == 1
    assert len({tuple(s["program_num"] for s in m["stems"].values()) for m in metas}) == 1

    def pitches(track):
        return [n.pitch for n in pretty_midi.PrettyMIDI(os.path.join(track, "MIDI", "S01.mid")).instruments[0].notes]

    by_k = {m["corpus"]["transpose"]: t for m, t in zip(metas, tracks)}
    base = np.array(pitches(by_k[0]))
    for k in (1, 5, 7):
        assert np.all((np.array(pitches(by_k[k])) - base) % 12 == k)
    ds_tracks, _ = slakh.scan_tracks(out, "all")
    assert len(ds_tracks) == 12 and all(len(t.stems) >= 2 for t in ds_tracks)


def test_a_folder_of_datasets_is_read_as_one(tmp_path):
    import shutil
    from conftest import FIXTURE
    redux = os.path.join(FIXTURE, "slakh2100_flac_redux")
    root = tmp_path / "both"
    root.mkdir()
    shutil.copytree(redux, root / "slakh")
    corpus.render_corpus(str(root / "corpus"), folders=["palestrina"], max_works=2, transpositions="1", seconds=2.0,
                         chunks=1, seed=0, workers=1, progress=False)
    alone = len(slakh.scan_tracks(redux, "all")[0]) + len(slakh.scan_tracks(str(root / "corpus"), "all")[0])
    assert len(slakh.scan_tracks(str(root), "all")[0]) == alone
    shutil.copytree(root / "corpus", root / "again")
    with pytest.raises(data.DatasetError, match="two datasets"):
        slakh.scan_tracks(str(root), "all")


def test_bad_transpositions_value_is_a_clear_error(tmp_path):
    with pytest.raises(corpus.CorpusError, match="transpositions"):
        corpus.render_corpus(str(tmp_path / "x"), transpositions="13", progress=False)


def test_a_midi_file_gives_twelve_keys_with_its_own_programs_and_drums_unmoved(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    for program, is_drum, pitch in ((33, False, 40), (0, False, 64), (0, True, 38)):
        inst = pretty_midi.Instrument(program, is_drum=is_drum)
        inst.notes = [pretty_midi.Note(90, pitch, 0.5 * i, 0.5 * i + 0.4) for i in range(6)]
        pm.instruments.append(inst)
    src = tmp_path / "song.mid"
    pm.write(str(src))
    out = corpus.render_midi_transpositions(str(src), str(tmp_path / "t"), seconds=2.0, start=0.5)
    tracks = sorted(os.listdir(os.path.join(out, "test")))
    assert len(tracks) == 12
    for k in (0, 3, 11):
        d = os.path.join(out, "test", f"song-t{k:02d}")
        meta = yaml.safe_load(open(os.path.join(d, "metadata.yaml")))
        assert meta["corpus"]["transpose"] == k and meta["corpus"]["piece"] == "song"
        assert sorted(s["program_num"] for s in meta["stems"].values()) == [0, 33, 128]
        notes = {s: pretty_midi.PrettyMIDI(os.path.join(d, "MIDI", s + ".mid")).instruments[0] for s in meta["stems"]}
        by_program = {meta["stems"][s]["program_num"]: inst for s, inst in notes.items()}
        shift = k - 12 if k >= 6 else k
        assert {n.pitch for n in by_program[33].notes} == {40 + shift}
        assert {n.pitch for n in by_program[128].notes} == {38}           # drums are not transposed
        assert min(n.start for n in by_program[0].notes) == pytest.approx(0.0, abs=1e-3)  # the chunk starts at 0


def test_one_program_per_class_gives_each_class_its_first_program(tmp_path):
    from songs.compose import CLASS_PARTS
    from audio.instruments import INSTRUMENTS, program_class
    out, _ = corpus.render_corpus(str(tmp_path / "one"), folders=["palestrina"], max_works=3, transpositions="2",
                                  seconds=1.0, chunks=1, seed=0, workers=1, progress=False, one_program=True)
    programs = [s["program_num"] for d, _, fs in os.walk(out) if "metadata.yaml" in fs
                for s in yaml.safe_load(open(os.path.join(d, "metadata.yaml")))["stems"].values()]
    assert programs and all(p == CLASS_PARTS[INSTRUMENTS[program_class(p, False)]][1][0] for p in programs)


def test_a_folder_with_both_split_folders_and_datasets_is_refused(tmp_path):
    import shutil
    from conftest import FIXTURE
    slakh = os.path.join(FIXTURE, "slakh2100_flac_redux")
    root = tmp_path / "mixed"
    shutil.copytree(slakh, root)                      # split folders at the root (an older demo's layout) ...
    shutil.copytree(slakh, root / "composed")         # ... and a dataset beside them
    with pytest.raises(data.DatasetError, match="both split folders"):
        data.scan_tracks(str(root), "all")
