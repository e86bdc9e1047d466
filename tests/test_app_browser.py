"""The page in a real browser: Debian's headless Chromium driven by Selenium through Debian's chromedriver, on the
tiny copy checkpoint (conftest.tiny_app_checkpoint).

Without Chromium, chromedriver or selenium these tests skip and say what to install; under CI (CI=true) they
fail instead, since .ci/run installs all three. STEMGEN_APP_SCREENSHOT=docs/app.png also saves the page after
a generation there, for the README.
"""
import io
import os
import shutil
import threading
import urllib.request

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from conftest import bass_line, serve_app, stop_app
from decode import Sampling

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium==4.51.0"
# This machine's network is closed: without these flags Chromium waits on connections it cannot make.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--window-size=860,1500"]
WAIT = 60  # seconds any one thing may take to appear on the page
SR = 22050


def missing() -> list[str]:
    return ([] if os.path.exists(CHROMIUM) else [CHROMIUM]) + ([] if os.path.exists(CHROMEDRIVER) else [CHROMEDRIVER]) \
        + ([] if webdriver is not None else ["the selenium package"])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    absent = missing()
    if absent:
        message = f"browser tests need {', '.join(absent)}: {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (.ci/run installs them)")
        pytest.skip(message)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, tiny_app_checkpoint):
    """(driver, engine, base URL) with the app serving the tiny checkpoint."""
    engine, server, base = serve_app(tiny_app_checkpoint, max_seconds=20.0)
    yield browser, engine, base
    stop_app(engine, server)


def open_page(driver, base):
    driver.get(base + "/")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[name=instrument]")) > 0)


def wait_for(driver, condition, timeout=WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def write_bass_line(path, seconds=2.0, sr=SR, channels=2):
    """conftest.bass_line as PCM-16 (its channels alike): something for the copy model to give back and to
    transcribe. Returns its length in samples."""
    y = bass_line(seconds, sr, seed=3)
    sf.write(str(path), np.stack([y] * channels, axis=1), sr, subtype="PCM_16")
    return len(y)


def upload(driver, path):
    driver.find_element(By.ID, "context-file").send_keys(str(path))
    wait_for(driver, lambda d: d.find_element(By.ID, "context-view").is_displayed()
             or d.find_element(By.ID, "context-error").is_displayed())


def generate(driver, steps="8 4", clicks=1, button="generate-btn"):
    steps_box = driver.find_element(By.ID, "steps")
    driver.execute_script("arguments[0].value = arguments[1]", steps_box, steps)
    before = len(driver.find_elements(By.CSS_SELECTOR, ".take"))
    # several clicks in one script: the requests are all sent before the first answer comes back
    driver.execute_script("for (let i = 0; i < arguments[1]; i++) document.getElementById(arguments[0]).click()",
                          button, clicks)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".take")) == before + clicks)


def wait_done(driver, n_takes):
    wait_for(driver, lambda d: [t.get_attribute("data-state") for t in d.find_elements(By.CSS_SELECTOR, ".take")]
             == ["done"] * n_takes)
    return driver.find_elements(By.CSS_SELECTOR, ".take")


def fetch(base, url):
    with urllib.request.urlopen(base + url if url.startswith("/") else url, timeout=WAIT) as r:
        return r.read()


def media_duration(driver, element):
    """The duration an <audio> element reports once it has loaded its metadata (it decoded the file's header)."""
    driver.execute_script("arguments[0].load()", element)
    wait_for(driver, lambda d: d.execute_script("return arguments[0].readyState", element) >= 1)
    return driver.execute_script("return arguments[0].duration", element)


DECODE = """
const [src, rate, done] = arguments;
fetch(src).then((r) => r.arrayBuffer())
  .then((bytes) => new OfflineAudioContext(1, 1, rate).decodeAudioData(bytes))
  .then((buffer) => done({length: buffer.length, rate: buffer.sampleRate, channels: buffer.numberOfChannels}))
  .catch((e) => done({error: String(e)}));
"""


# ---------------------------------------------------------------------------------------------------------

def test_the_page_loads_with_the_trained_instruments_and_the_defaults(page):
    driver, engine, base = page
    open_page(driver, base)
    assert driver.title.startswith("StemGen")
    boxes = driver.find_elements(By.CSS_SELECTOR, "input[name=instrument]")
    assert [b.get_attribute("value") for b in boxes] == ["Piano", "Bass", "Drums"]   # only what it trained on
    assert [b.is_selected() for b in boxes] == [False, True, False]
    paper = Sampling()                                  # the defaults, one step count per level of the 2 here
    assert driver.find_element(By.ID, "steps").get_attribute("value") == " ".join(map(str, paper.steps[:2]))
    assert driver.find_element(By.ID, "scale-audio").get_attribute("value") == f"{paper.scale_audio:g}"
    assert not driver.find_element(By.ID, "generate-btn").is_enabled()        # nothing to add to yet
    assert "up to 20 s" in driver.find_element(By.ID, "limits").text


def test_an_upload_gives_a_playable_stem_and_mix(page, tmp_path):
    driver, engine, base = page
    open_page(driver, base)
    n = write_bass_line(tmp_path / "song.flac")
    upload(driver, tmp_path / "song.flac")
    assert "song.flac: 2 s, 22050 Hz, 2 channel(s)" in driver.find_element(By.ID, "context-name").text
    assert media_duration(driver, driver.find_element(By.ID, "context-player")) == pytest.approx(n / SR, abs=1e-3)
    generate(driver)
    (take,) = wait_done(driver, 1)
    stem = take.find_element(By.CSS_SELECTOR, ".stem-audio")
    mix = take.find_element(By.CSS_SELECTOR, ".mix-audio")
    for element, channels in [(stem, 1), (mix, 2)]:
        src = element.get_attribute("src")
        info = sf.info(io.BytesIO(fetch(base, src)))                         # what the player was given
        assert (info.samplerate, info.frames, info.channels, info.format) == (SR, n, channels, "FLAC")
        assert media_duration(driver, element) == pytest.approx(n / SR, abs=1e-3)
        decoded = driver.execute_async_script(DECODE, src, SR)              # the browser's own decoder
        assert decoded == {"length": n, "rate": SR, "channels": channels}
    assert driver.execute_script("return arguments[0].play().then(() => true)", stem) is True
    images = take.find_elements(By.CSS_SELECTOR, "img.spec")
    assert len(images) == 2
    wait_for(driver, lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images))
    names = [a.get_attribute("download") for a in take.find_elements(By.CSS_SELECTOR, "a.download-audio")]
    assert names == ["song.bass.flac", "song.with-bass.flac"]


def test_a_bad_file_shows_its_message_and_leaves_nothing(page, tmp_path):
    driver, engine, base = page
    open_page(driver, base)
    before = sorted(os.listdir(engine.store.root))
    for name, data, message in [("notes.wav", b"not a sound", "not an audio file"), ("empty.flac", b"", "empty")]:
        (tmp_path / name).write_bytes(data)
        driver.find_element(By.ID, "context-file").send_keys(str(tmp_path / name))
        error = driver.find_element(By.ID, "context-error")
        wait_for(driver, lambda d: message in error.text)
        assert error.is_displayed()
        assert not driver.find_element(By.ID, "context-view").is_displayed()
        assert sorted(os.listdir(engine.store.root)) == before


def test_two_overlapping_requests_are_both_handled_the_second_waiting_in_view(page, tmp_path, monkeypatch):
    driver, engine, base = page
    open_page(driver, base)
    write_bass_line(tmp_path / "song.wav")
    upload(driver, tmp_path / "song.wav")
    release, real = threading.Event(), engine._stems

    def held(job, context, generator):                     # the first generation waits until told
        while not release.wait(0.02):
            engine._on_step(job)(0)
        return real(job, context, generator)

    monkeypatch.setattr(engine, "_stems", held)
    try:
        generate(driver, clicks=2)
        # the server may take either request first: one take runs (held), the other shows its place in the queue
        wait_for(driver, lambda d: [s[:10] for s in sorted(t.text for t in d.find_elements(By.CSS_SELECTOR,
                                                                                        ".take-status"))]
                 == ["Generating", "Waiting in"])
        waiting = [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".take-status") if "Waiting" in t.text]
        assert waiting == ["Waiting in the queue: 1 generation(s) before this one."]
    finally:
        release.set()
    takes = wait_done(driver, 2)
    seeds = {t.find_element(By.TAG_NAME, "h3").text for t in takes}
    assert len(seeds) == 2                                 # two takes, each with its own fresh seed
    for take in takes:
        assert take.find_element(By.CSS_SELECTOR, ".stem-audio").get_attribute("src")


def test_the_midi_download_parses_and_has_notes(page, tmp_path):
    driver, engine, base = page
    open_page(driver, base)
    write_bass_line(tmp_path / "line.wav", seconds=4.0)
    upload(driver, tmp_path / "line.wav")
    generate(driver)
    (take,) = wait_done(driver, 1)
    link = take.find_element(By.CSS_SELECTOR, "a.download-midi")
    assert link.get_attribute("download") == "line.bass.mid"
    pm = pretty_midi.PrettyMIDI(io.BytesIO(fetch(base, link.get_attribute("href"))))
    (track,) = pm.instruments
    assert (track.program, track.is_drum) == (32, False) and len(track.notes) > 0
    assert {40, 43, 45, 47} & {n.pitch for n in track.notes}
    link.click()                                            # the page's own download: no error shown
    status = take.find_element(By.CSS_SELECTOR, ".midi-status")
    wait_for(driver, lambda d: "transcribing" not in status.text)
    assert "error" not in status.get_attribute("class")


def test_the_example_song_and_listen_again_keeps_the_earlier_take(page):
    driver, engine, base = page
    open_page(driver, base)
    driver.find_element(By.ID, "example-btn").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "context-view").is_displayed())
    assert driver.find_element(By.ID, "context-name").text.startswith("monteverdi-madrigal-4-16.flac: 12 s")
    generate(driver, steps="32 16")
    wait_done(driver, 1)
    generate(driver, steps="32 16", button="again-btn")
    takes = wait_done(driver, 2)
    assert [t.find_element(By.TAG_NAME, "h3").text.split(":")[0] for t in takes] == ["Take 2", "Take 1"]
    wait_for(driver, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                                   for i in d.find_elements(By.CSS_SELECTOR, "img.spec")))
    shot = driver.get_screenshot_as_png()
    assert shot.startswith(b"\x89PNG")
    target = os.environ.get("STEMGEN_APP_SCREENSHOT")
    if target:
        save_small_png(shot, target)
        assert os.path.getsize(target) < 300_000


def save_small_png(png: bytes, path: str) -> None:
    """A screenshot as a 128-colour PNG (a page of text and spectrograms keeps well at that)."""
    from PIL import Image
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    tmp = path + ".tmp"
    image.save(tmp, format="PNG", optimize=True)
    shutil.move(tmp, path)
