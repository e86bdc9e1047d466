"""app.py without a browser: the HTTP API on a tiny checkpoint (conftest.tiny_app_checkpoint), bad uploads,
the queue, stopping in the middle of a generation, and Ctrl-C on the real command."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import socket
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import torch
import pytest
import soundfile as sf

import app
import generate
from page import engine as page_engine
from page import requests as page_requests
from training.checkpoint import SHIPPED_CHECKPOINT
from cli.common import USER_ERROR
from conftest import ROOT, bass_line, serve_app, stop_app


def tonal(seconds, sr, channels=2, seed=1):
    """conftest.bass_line as [S, C] float32 for soundfile, each channel a little quieter than the one before."""
    y = bass_line(seconds, sr, seed)
    return np.stack([y * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


class Client:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, data=None, headers=None, page=True):
        """(status, JSON body) of a request, a POST with the page's header unless page=False; error statuses are
        returned, not raised."""
        headers = {**({app.PAGE_HEADER: "1"} if page and method == "POST" else {}), **(headers or {})}
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def upload(self, name, data):
        return self.call("POST", "/api/upload?name=" + urllib.request.quote(name), data)

    def generate(self, **options):
        return self.call("POST", "/api/generate", json.dumps(options).encode(), {"Content-Type": "application/json"})

    def wait(self, job_id, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            status, body = self.call("GET", f"/api/jobs/{job_id}")
            assert status == 200, body
            if body["state"] in ("done", "error"):
                return body
            time.sleep(0.05)
        raise AssertionError(f"generation {job_id} did not finish in {timeout} s")

    def fetch(self, path):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return r.read(), r.headers


@pytest.fixture(scope="module")
def served(tiny_app_checkpoint):
    engine, server, base = serve_app(tiny_app_checkpoint, max_seconds=5.0)
    yield engine, Client(base)
    stop_app(engine, server)                                     # the temporary folder goes with the server


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def encoded(x, sr, fmt, subtype=None):
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"stemgen-test-{os.getpid()}.{fmt.lower()}")
    try:
        sf.write(path, x, sr, format=fmt, subtype=subtype)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.remove(path)


# ---------------------------------------------------------------------------------------------------------

def test_defaults_bind_to_this_machine_and_use_the_shipped_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                  # wherever it is started from
    args = app.build_parser().parse_args([])
    assert args.host == "127.0.0.1"
    assert args.checkpoint == SHIPPED_CHECKPOINT and os.path.isabs(args.checkpoint)


def test_a_missing_checkpoint_is_named_and_nothing_starts(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "stemgen-music.pt")
    monkeypatch.setattr(app, "DEFAULT_APP_CHECKPOINT", missing)   # a copy without the shipped checkpoint
    assert app.main(["--port", "0"]) == USER_ERROR
    err = capsys.readouterr().err
    assert f"checkpoint not found: {missing}" in err and "shipped" in err
    assert app.main(["--checkpoint", "nope.pt", "--port", "0"]) == USER_ERROR
    assert "checkpoint not found: nope.pt" in capsys.readouterr().err


def test_upload_then_generate_gives_stems_and_mix_in_the_contexts_format(served):
    engine, client = served
    x = tonal(2.0, 22050)
    status, ctx = client.upload("my song.flac", encoded(x, 22050, "FLAC", "PCM_24"))
    assert status == 200, ctx
    assert (ctx["name"], ctx["sample_rate"], ctx["channels"], ctx["seconds"]) == ("my_song.flac", 22050, 2, 2.0)
    status, job = client.generate(context=ctx["id"], instruments=["bass", "Piano"], seed=3, steps="6 3")
    assert status == 200, job
    done = client.wait(job["id"])
    assert done["state"] == "done", done
    assert done["step"] == done["total"] > 0                    # progress counted every decoding step
    assert (done["instruments"], done["seed"], done["settings"]["steps"]) == (["Bass", "Piano"], "3", [6, 3])
    result = done["result"]
    assert [s["name"] for s in result["stems"]] == ["my_song.bass.flac", "my_song.piano.flac"]
    assert result["mix"]["name"] == "my_song.with-bass-piano.flac"
    for item, channels in [(result["stems"][0], 1), (result["stems"][1], 1), (result["mix"], 2)]:
        data, headers = client.fetch(item["audio"])
        assert headers["Content-Type"] == "audio/flac"
        info = sf.info(io.BytesIO(data))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (22050, x.shape[0], channels, "PCM_24")
        png, headers = client.fetch(item["spectrogram"])
        assert headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG")
    # beside each take: how well the part fits (generate.py's line), and its notes played through the SoundFont
    for stem, name in zip(result["stems"], ("bass", "piano")):
        assert stem["fit"]["line"].startswith(f"fit of the new {name}: key") and "chords" in stem["fit"]
    data, headers = client.fetch(result["stems"][0]["notes"])
    info = sf.info(io.BytesIO(data))
    assert headers["Content-Type"] == "audio/wav" and (info.samplerate, info.frames) == (22050, x.shape[0])


def test_same_seed_same_take_and_a_fresh_seed_is_reported(served):
    """The page passes a typed seed through (exactly, as text) and reports the fresh one it draws when none is
    typed, so that a take can be made again (that a seed fixes the tokens is decode.py's, tested in test_decode)."""
    engine, client = served
    _, ctx = client.upload("a.wav", encoded(tonal(1.0, 16000, 1), 16000, "WAV"))
    takes = []
    for seed in (5, 5, None):
        _, job = client.generate(context=ctx["id"], instruments=["Drums"], seed=seed, steps=[4, 2], temperature=2)
        takes.append(client.wait(job["id"]))
    audio_of = [client.fetch(t["result"]["stems"][0]["audio"])[0] for t in takes]
    assert takes[0]["seed"] == takes[1]["seed"] == "5" and audio_of[0] == audio_of[1]
    assert 0 <= int(takes[2]["seed"]) < page_requests.FRESH_SEEDS and takes[2]["seed"] != "5"
    _, job = client.generate(context=ctx["id"], instruments=["Drums"], seed=str(2 ** 63 - 1), steps=[4, 2])
    assert client.wait(job["id"])["seed"] == str(2 ** 63 - 1)            # exact, past JavaScript's 2^53


@pytest.mark.parametrize("name,data,message", [
    ("empty.wav", b"", "empty"),
    ("notes.wav", b"these are not the droids", "not an audio file"),
    ("broken.wav", b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + bytes(40), "corrupt"),
    ("long.wav", None, "limit is 5 s"),
    ("quiet.wav", None, "silent"),
    ("nan.wav", None, "corrupt"),
])
def test_a_bad_upload_gets_one_clear_message_and_leaves_nothing(served, name, data, message):
    engine, client = served
    if name == "long.wav":
        data = encoded(np.zeros((16000 * 6, 1), np.float32) + 0.1, 16000, "WAV")
    elif name == "quiet.wav":
        data = encoded(np.zeros((16000, 1), np.float32), 16000, "WAV")
    elif name == "nan.wav":
        data = encoded(np.full((1600, 1), np.nan, np.float32), 16000, "WAV", "FLOAT")
    before = files_under(engine.store.root)
    status, body = client.upload(name, data)
    assert status == 400 and message in body["error"], body
    assert files_under(engine.store.root) == before


def test_an_upload_over_the_size_limit_is_refused_unread(served, monkeypatch):
    engine, client = served
    monkeypatch.setattr(engine, "max_bytes", 1000)
    before = files_under(engine.store.root)
    status, body = client.upload("big.wav", encoded(tonal(1.0, 16000, 1), 16000, "WAV"))
    assert status == 413 and "limit is" in body["error"]
    assert files_under(engine.store.root) == before


@pytest.mark.parametrize("options,message", [
    ({"instruments": []}, "at least one instrument"),
    ({"instruments": ["Organ"]}, "never trained on Organ"),
    ({"instruments": ["kazoo"]}, "unknown instrument"),
    ({"instruments": ["Bass"], "steps": "4"}, "Give 2 step counts"),
    ({"instruments": ["Bass"], "temperature": "hot"}, "must be numbers"),
    ({"instruments": ["Bass"], "seed": -1}, "seed"),
    ({"instruments": ["Bass"], "context": "nope"}, "Upload a context"),
])
def test_bad_options_are_refused_with_a_message(served, options, message):
    engine, client = served
    _, ctx = client.upload("c.wav", encoded(tonal(0.5, 16000, 1), 16000, "WAV"))
    status, body = client.generate(**{"context": ctx["id"], **options})
    assert status == 400 and message in body["error"], body


def gate(engine, monkeypatch):
    """Hold every generation until `release` is set (stopping still ends it at its next step)."""
    started, release = threading.Event(), threading.Event()
    real = engine._stems

    def gated(job, context, generator):
        started.set()
        while not release.wait(0.02):
            engine._on_step(job)(0)
        return real(job, context, generator)

    monkeypatch.setattr(engine, "_stems", gated)
    return started, release


def test_one_generation_at_a_time_the_rest_queue_then_busy(served, monkeypatch):
    engine, client = served
    _, ctx = client.upload("q.wav", encoded(tonal(0.5, 16000, 1), 16000, "WAV"))
    started, release = gate(engine, monkeypatch)
    try:
        ids = [client.generate(context=ctx["id"], instruments=["Bass"], steps="2 1")[1]["id"]]
        assert started.wait(10)
        for _ in range(engine.max_queue):
            ids.append(client.generate(context=ctx["id"], instruments=["Bass"], steps="2 1")[1]["id"])
        states = [client.call("GET", f"/api/jobs/{i}")[1] for i in ids]
        assert [s["state"] for s in states] == ["running"] + ["queued"] * engine.max_queue
        assert [s["ahead"] for s in states] == list(range(len(ids)))
        status, body = client.generate(context=ctx["id"], instruments=["Bass"])
        assert status == 503 and "Busy" in body["error"]
    finally:
        release.set()
    assert [client.wait(i)["state"] for i in ids] == ["done"] * len(ids)


def test_stopping_mid_generation_ends_it_and_removes_every_file(tiny_app_checkpoint, monkeypatch):
    engine = page_engine.Engine(tiny_app_checkpoint, device="cpu")
    started, _ = gate(engine, monkeypatch)
    path = os.path.join(engine.store.root, "in.wav")
    sf.write(path, tonal(0.5, 16000, 1), 16000)
    ctx = engine._add_context(engine.store.folder("context"), path)
    job = engine.submit({"context": ctx.id, "instruments": ["Bass"]})
    assert started.wait(10)
    t = time.time()
    engine.close()
    assert time.time() - t < 2
    assert job.state == "error" and "stopped" in job.error
    assert not os.path.exists(engine.store.root)


def test_the_example_is_generate_pys_and_is_added_once(served):
    engine, client = served
    status, ctx = client.call("POST", "/api/example")
    assert status == 200, ctx
    assert (ctx["name"], ctx["sample_rate"], ctx["seconds"]) == (os.path.basename(generate.EXAMPLE), 32000, 12.0)
    assert client.call("POST", "/api/example")[1]["id"] == ctx["id"]   # made once


def test_range_requests_serve_part_of_a_file(served):
    engine, client = served
    _, ctx = client.upload("r.wav", encoded(tonal(0.5, 16000, 1), 16000, "WAV"))
    whole, _ = client.fetch(ctx["audio"])
    req = urllib.request.Request(client.base + ctx["audio"], headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.read() == whole[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    assert client.call("GET", "/files/nosuchtoken/x.wav")[0] == 404
    assert client.call("GET", "/files/../../etc/passwd")[0] == 404


@pytest.mark.slow
def test_ctrl_c_stops_the_command_and_leaves_no_file_or_process(tiny_app_checkpoint, tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), "--checkpoint", tiny_app_checkpoint,
                             "--port", "0", "--device", "cpu"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "StemGen page at http://127.0.0.1:" in line, line + proc.stdout.read()
        base = line.split(" at ")[1].split()[0].rstrip("/")
        root = line.split("temporary files in ")[1].split(",")[0]
        status, ctx = Client(base).upload("c.wav", encoded(tonal(0.5, 16000, 1), 16000, "WAV"))
        assert status == 200 and files_under(root)
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
        assert children.stdout.split() == []                    # threads only: nothing to leave behind
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "stopping" in proc.stdout.read()
        assert not os.path.exists(root)
        assert os.listdir(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_page_starts_from_the_checkpoints_recommended_sampling_and_reports_it(tiny_app_checkpoint, tmp_path):
    from training.checkpoint import save_checkpoint
    ckpt = torch.load(tiny_app_checkpoint, weights_only=True)
    ckpt["sampling"] = {"temperature": 0.7, "fine_temperature": 0.0}
    path = str(tmp_path / "tuned.pt")
    save_checkpoint(path, ckpt)
    engine = page_engine.Engine(path, device="cpu")
    try:
        info = engine.info()
        assert info["recommended"] == ckpt["sampling"] and info["defaults"]["temperature"] == 0.7
        s = engine.sampling_from({"scale_audio": "2"})
        assert (s.temperature, s.fine_temperature, s.scale_audio) == (0.7, 0.0, 2.0)   # the page's option wins
    finally:
        engine.close()



# ---------------------------------------------------------------------------------------------------------
# Only this machine's own page drives the server; no request can take what the machine has

def test_a_foreign_host_or_origin_is_refused(served):
    """DNS rebinding (a foreign Host) and other pages (a foreign Origin or fetch site) get 403 and change nothing."""
    engine, client = served
    port = urllib.parse.urlsplit(client.base).port
    assert client.call("GET", "/api/info", headers={"Host": f"stemgen.attacker.example:{port}"})[0] == 403
    assert client.call("GET", "/api/info", headers={"Host": f"localhost:{port}"})[0] == 200
    wav = encoded(tonal(0.5, 16000, 1), 16000, "WAV")
    for headers in ({"Origin": "http://evil.example"}, {"Origin": f"http://127.0.0.1:{port + 1}"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Host": f"evil.example:{port}"}):
        status, body = client.call("POST", "/api/upload?name=x.wav", wav, headers)
        assert status == 403 and "Forbidden" in body["error"]
    assert client.call("POST", "/api/upload?name=x.wav", wav, {"Origin": f"http://127.0.0.1:{port}"})[0] == 200


def test_a_post_without_the_pages_header_is_refused_as_a_cross_site_form_would_be(served):
    """A foreign page can send a text/plain POST without a preflight, but not one with a custom header."""
    engine, client = served
    before = len(engine.contexts)
    status, body = client.call("POST", "/api/upload?name=x.wav", encoded(tonal(0.5, 16000, 1), 16000, "WAV"),
                               {"Content-Type": "text/plain"}, page=False)
    assert status == 403 and app.PAGE_HEADER in body["error"] and len(engine.contexts) == before


def test_an_upload_that_decodes_too_large_is_refused_from_its_header(served):
    """A small FLAC of constant samples at a high rate and many channels is refused before it is decoded."""
    engine, client = served
    bomb = encoded(np.full((4 * 384000, 8), 0.25, np.float32), 384000, "FLAC")
    assert len(bomb) < engine.max_bytes
    status, body = client.call("POST", "/api/upload?name=bomb.flac", bomb)
    assert status == 400 and "decodes to" in body["error"]


def test_the_page_keeps_a_mono_copy_at_the_codecs_rate_and_the_upload_keeps_its_own_name(served):
    engine, client = served
    status, ctx = client.upload("context.png", encoded(tonal(1.0, 22050, 2), 22050, "WAV"))
    assert status == 200, ctx
    kept = engine.contexts[ctx["id"]]
    assert kept.mono.ndim == 1 and len(kept.mono) == engine.tok.sample_rate and not hasattr(kept, "x")
    data, headers = client.fetch(ctx["audio"])
    assert data[:4] == b"RIFF"                                        # its own audio, not the spectrogram


def test_a_request_is_bounded_and_a_take_can_be_cancelled(served, monkeypatch):
    engine, client = served
    monkeypatch.setattr(page_engine, "MAX_JOB_STEPS", 1000)          # the bound, on a context the fixture allows
    _, ctx = client.upload("long.wav", encoded(tonal(5.0, 16000, 1), 16000, "WAV"))
    status, body = client.generate(context=ctx["id"], instruments=["bass", "piano", "drums"], steps="1024 1024")
    assert status == 400 and "decoding steps" in body["error"]
    status, job = client.generate(context=ctx["id"], instruments=["bass"], steps="400 400", seed=1)
    assert status == 200, job
    status, after = client.call("POST", f"/api/cancel/{job['id']}")
    assert status == 200
    done = client.wait(job["id"])
    assert done["state"] == "error" and done["error"] == "Cancelled."
    assert client.call("POST", "/api/cancel/nosuchjob")[0] == 400


def test_nested_json_and_a_client_that_hangs_up_get_no_traceback(served, capfd):
    engine, client = served
    status, body = client.call("POST", "/api/generate", b"[" * 30000, {"Content-Type": "application/json"})
    assert status == 400
    host, port = urllib.parse.urlsplit(client.base).hostname, urllib.parse.urlsplit(client.base).port
    with socket.create_connection((host, port)) as s:
        s.sendall(f"POST /api/upload?name=a.wav HTTP/1.1\r\nHost: {host}:{port}\r\n{app.PAGE_HEADER}: 1\r\n"
                  f"Content-Length: 1000000\r\n\r\nRIFF".encode())
    time.sleep(0.5)
    assert client.call("GET", "/api/info")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_past_its_connection_cap_the_server_answers_busy_at_once(tiny_app_checkpoint, monkeypatch):
    from conftest import serve_app, stop_app
    monkeypatch.setattr(app, "MAX_CONNECTIONS", 1)
    engine, server, base = serve_app(tiny_app_checkpoint)
    try:
        host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
        with socket.create_connection((host, port)) as held:          # a request that never ends holds the slot
            held.sendall(f"GET /api/info HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
            time.sleep(0.2)
            status, body = Client(base).call("GET", "/api/info")
            assert status == 503 and "Busy" in body["error"]
        assert app.Server.request_queue_size >= 64
    finally:
        stop_app(engine, server)


def test_bad_ports_and_a_public_host_are_told_plainly(capsys):
    with pytest.raises(SystemExit):
        app.build_parser().parse_args(["--port", "99999"])
    assert "outside 0 to 65535" in capsys.readouterr().err
    assert app.host_warning("127.0.0.1") is None and app.host_warning("::1") is None
    assert "anyone who can reach" in app.host_warning("0.0.0.0")
