"""Files are written as a user expects: atomically, with the usual permissions, in the asked format."""
import os

import numpy as np
import pytest
import soundfile as sf

from audio import files as audio_files


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_open_would_give(tmp_path, umask):
    """A file written atomically gets 0o666 less the umask, as open() would, not a temporary file's 0o600."""
    old = os.umask(umask)
    try:
        path = tmp_path / "out.txt"
        audio_files.atomic_write(str(path), lambda tmp: open(tmp, "w").write("x"))
        wav = tmp_path / "out.wav"
        audio_files.write_audio(str(wav), np.zeros(100, np.float32), 8000)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(wav).st_mode & 0o777 == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["out.txt", "out.wav"]       # no temporary left behind


def test_atomic_write_keeps_an_existing_file_and_leaves_no_temporary_on_failure(tmp_path):
    """Without overwrite an existing file is kept; a writer that fails leaves the target as it was."""
    path = tmp_path / "f.txt"
    path.write_text("user's file")
    with pytest.raises(FileExistsError):
        audio_files.atomic_write(str(path), lambda tmp: open(tmp, "w").write("new"))

    def failing(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("crash")
    with pytest.raises(RuntimeError):
        audio_files.atomic_write(str(path), failing, overwrite=True)
    assert path.read_text() == "user's file" and os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("ext,subtype,written", [(".wav", "PCM_24", "PCM_24"), (".wav", "FLOAT", "FLOAT"),
                                                 (".flac", "PCM_24", "PCM_24"), (".flac", "FLOAT", "PCM_16"),
                                                 (".wav", None, "PCM_16")])
def test_write_audio_keeps_the_subtype_where_the_format_can_hold_it(tmp_path, ext, subtype, written):
    """The subtype asked for is kept when the file type allows it, else that type's default is used."""
    path = str(tmp_path / f"x{ext}")
    x = (0.5 * np.sin(np.linspace(0, 100, 2 * 4800))).reshape(2, -1).astype(np.float32)   # [C, S]
    audio_files.write_audio(path, x, 48000, subtype=subtype)
    info = sf.info(path)
    assert (info.subtype, info.samplerate, info.channels, info.frames) == (written, 48000, 2, 4800)
    assert audio_files.audio_format(path) == (ext[1:].upper(), written)


def test_files_written_together_land_all_or_none_and_a_signal_waits_for_the_renames(tmp_path, monkeypatch):
    """write_together: a failure while writing or renaming leaves every path as it was (an overwritten file is put
    back); Ctrl-C during the renames is held until they are done."""
    import os
    import signal
    from audio import files
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    def writer(text):
        def write(tmp):
            with open(tmp, "w") as f:
                f.write(text)
        return write
    real_replace = os.replace

    def failing(src, dst):
        if str(dst) == str(b):
            raise PermissionError(13, "Permission denied", str(dst))
        real_replace(src, dst)
    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(PermissionError):
        files.write_together([(str(a), writer("new a"), ".txt"), (str(b), writer("new b"), ".txt")])
    assert a.read_text() == "old a" and sorted(os.listdir(tmp_path)) == ["a.txt"]

    def interrupting(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)                      # held back until both renames are done
    monkeypatch.setattr(files.os, "replace", interrupting)
    import threading
    other = threading.Event()
    waiting = threading.Thread(target=other.wait, args=(5,))   # as torch's or the page's threads: a signal may
    waiting.start()                                            # land on any thread of the process
    try:
        with pytest.raises(files.WrittenThenInterrupted):    # a KeyboardInterrupt that says all is written
            files.write_together([(str(a), writer("new a"), ".txt"), (str(b), writer("new b"), ".txt")])
    finally:
        other.set()
        waiting.join()
    assert a.read_text() == "new a" and b.read_text() == "new b"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]
