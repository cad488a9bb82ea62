"""gapcal serve: the JSON API through Flask's test client, and the page end to end in a real headless
Chromium (Debian's, installed by the test when missing and possible)."""

import io
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gapcal.folder import IndexFolder, build_folder
from gapcal.serve import create_app

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "examples" / "coco"
TINY = ROOT / "models" / "tiny-clip"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "index"
    build_folder(COCO / "pairs.csv", TINY, out, log=lambda *a: None, show_progress=False)
    return IndexFolder(out)


@pytest.fixture(scope="module")
def client(folder):
    return create_app(folder).test_client()


def test_text_search_returns_both_rankings_with_thumbnails(client, folder):
    answer = client.post("/api/search", json={"text": "two zebras fighting", "k": 5})
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["modality"] == "text" and len(body["results"]) == len(body["raw"]) == 5
    expected = folder.search(text="two zebras fighting", k=5)["results"]
    assert [h["id"] for h in body["results"]] == [h["id"] for h in expected]
    for hit in body["results"] + body["raw"]:
        assert ("thumbnail" in hit) == (hit["modality"] == "image") == ("image" in hit)
    image_hit = next(h for h in body["results"] + body["raw"] if h["modality"] == "image")
    thumb = client.get(image_hit["thumbnail"])
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.data)).size) == 256


def test_image_upload_finds_the_image_itself_first(client):
    data = {"image": (open(COCO / "images" / "4.jpg", "rb"), "4.jpg"), "k": "3"}
    answer = client.post("/api/search", data=data, content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["modality"] == "image" and "images/4.jpg" in [hit.get("image") for hit in body["results"]]


def test_info_and_page(client, folder):
    info = client.get("/api/info").get_json()
    assert info["items"] == {"text": 32, "image": 32} and info["index"] == "Flat" and "image" in info["fields"]
    page = client.get("/")
    assert page.status_code == 200 and b'id="query"' in page.data and b'id="compare"' in page.data


@pytest.mark.parametrize("request_kwargs, status, message", [
    (dict(json={"k": 3}), 400, 'expected JSON {"text": "...", "k": 10}'),
    (dict(json={"text": "  ", "k": 3}), 400, "the query text must be a non-empty string"),
    (dict(json={"text": "a cat", "k": 0}), 400, "k must be an integer from 1 to 100, got 0"),
    (dict(json={"text": "a cat", "k": "many"}), 400, "k must be an integer from 1 to 100, got 'many'"),
    (dict(json={"text": "a cat", "k": 2.5}), 400, "k must be an integer from 1 to 100, got 2.5"),
    (dict(data={"image": (io.BytesIO(b"not an image"), "x.jpg")}, content_type="multipart/form-data"), 400,
     "could not"),
    (dict(data={"picture": (io.BytesIO(b"x"), "x.jpg")}, content_type="multipart/form-data"), 400,
     "expected the image file in a form field named 'image'"),
])
def test_bad_requests_get_a_json_error(client, request_kwargs, status, message):
    answer = client.post("/api/search", **request_kwargs)
    assert answer.status_code == status and message in answer.get_json()["error"], answer.get_json()


def test_thumbnails_only_for_indexed_images(client, folder):
    text_id = int(folder.index.ids("text")[0])
    for item in (text_id, 10**9, 2**70):
        answer = client.get(f"/api/thumbnail/{item}")
        assert answer.status_code == 404 and "no image item with id" in answer.get_json()["error"]
    assert client.get("/api/thumbnail/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_create_app_needs_an_index_folder():
    with pytest.raises(TypeError, match="folder must be an IndexFolder, got str"):
        create_app("index")


# ---------------------------------------------------------------------- the page in a real browser
def _chromium():
    """Paths of Debian's chromium and chromedriver, installing them with apt-get when missing and allowed."""
    def found():
        return shutil.which("chromium"), shutil.which("chromedriver")

    if all(found()):
        return found()
    tried = "no chromium/chromedriver on PATH"
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
        for commands in ([install], [["apt-get", "update", "-q"], install]):
            done = [subprocess.run(c, capture_output=True, text=True, timeout=900, env=env) for c in commands]
            if all(d.returncode == 0 for d in done) and all(found()):
                return found()
            tried = f"apt-get install chromium chromium-driver failed: {done[-1].stderr.strip()[-300:]}"
    pytest.skip(f"no headless Chromium for the browser test ({tried}); install Debian's chromium and "
                "chromium-driver to run it")


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


@pytest.fixture(scope="module")
def server(folder):
    from werkzeug.serving import make_server

    httpd = make_server("127.0.0.1", 0, create_app(folder), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.port}"
    httpd.shutdown()
    thread.join(10)


def test_the_page_searches_and_renders_in_headless_chromium(browser, server, folder, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def hits(list_id):
        return browser.find_elements(By.CSS_SELECTOR, f"#{list_id} li.hit")

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda b: "32 images and 32 texts" in b.find_element(By.ID, "info").text)
    browser.find_element(By.ID, "query").send_keys("two zebras fighting")
    browser.find_element(By.ID, "search").click()
    WebDriverWait(browser, 30).until(lambda b: len(hits("calibrated")) == 10)
    expected = folder.search(text="two zebras fighting", k=10)["results"]
    assert [int(h.get_attribute("data-id")) for h in hits("calibrated")] == [h["id"] for h in expected]
    for element, hit in zip(hits("calibrated"), expected):
        assert element.find_element(By.CSS_SELECTOR, ".badge").text == hit["modality"]
        assert element.find_element(By.CSS_SELECTOR, ".score").text == f"{hit['score']:.3f}"
        if hit["modality"] == "text":
            assert element.find_element(By.CSS_SELECTOR, ".caption").text == hit["text"]
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "return [...document.querySelectorAll('#calibrated img.thumb')].every(i => i.complete && i.naturalWidth > 0)"))

    assert not browser.find_element(By.ID, "raw-column").is_displayed()
    browser.find_element(By.ID, "compare").click()  # raw vs calibrated side by side
    assert browser.find_element(By.ID, "raw-column").is_displayed() and len(hits("raw")) == 10

    browser.find_element(By.ID, "image").send_keys(str(COCO / "images" / "4.jpg"))
    # "searching image 4.jpg..." shows while the request runs: wait for its results
    WebDriverWait(browser, 30).until(lambda b: "results for image 4.jpg" in b.find_element(By.ID, "status").text)
    titles = [img.get_attribute("title") for img in browser.find_elements(By.CSS_SELECTOR, "#calibrated img.thumb")]
    assert "images/4.jpg" in titles[:3]  # the image itself, near the top (random weights)
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "return [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)"))

    # the screenshot shows what the DOM says: thumbnails are pictures, badges are drawn in their colours
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    ratio = browser.execute_script("return window.devicePixelRatio")
    for img in browser.find_elements(By.CSS_SELECTOR, "#calibrated img.thumb")[:3]:
        r = {k: int(v * ratio) for k, v in img.rect.items()}
        region = pixels[r["y"] + 2:r["y"] + r["height"] - 2, r["x"] + 2:r["x"] + r["width"] - 2]
        assert region.size and region.std() > 10  # a photo, not an empty box
    blue = (np.abs(pixels - [0x15, 0x65, 0xC0]).sum(axis=2) < 30).sum()  # the image badge's colour
    assert blue > 200

    browser.find_element(By.ID, "query").clear()
    browser.find_element(By.ID, "search").click()
    WebDriverWait(browser, 10).until(lambda b: "type a query first" in b.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")


def test_gapcal_serve_command_answers_on_the_port_it_prints(folder):
    import json
    import re
    import sys
    import urllib.request

    process = subprocess.Popen([sys.executable, "-m", "gapcal.cli", "serve", str(folder.path), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"64 items at (http://127\.0\.0\.1:\d+/)", line)
        assert match, line + process.stderr.read() if process.poll() is not None else line
        with urllib.request.urlopen(match[1] + "api/info", timeout=30) as answer:
            assert json.loads(answer.read())["items"] == {"text": 32, "image": 32}
    finally:
        process.terminate()
        process.wait(30)


def test_gapcal_serve_fails_early_without_the_model(folder, tmp_path):
    import sys

    done = subprocess.run([sys.executable, "-m", "gapcal.cli", "serve", str(folder.path), "--model",
                           str(tmp_path / "gone")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "pass the model's folder (--model)" in done.stderr


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, st.fixed_dictionaries({"text": json_values, "k": json_values})))
def test_any_json_body_gets_results_or_a_named_error(client, body):
    """The API never fails with a server error: any JSON is answered with results or a 400 naming the problem."""
    answer = client.post("/api/search", json=body)
    assert answer.status_code in (200, 400), answer.data[:300]
    payload = answer.get_json()
    if answer.status_code == 400:
        assert isinstance(payload["error"], str) and payload["error"]
    else:
        assert len(payload["results"]) == min(int(body["k"]), 64) if "k" in body else 10


def test_an_upload_over_the_limit_gets_a_json_413(folder):
    app = create_app(folder)
    app.config["MAX_CONTENT_LENGTH"] = 1000
    answer = app.test_client().post("/api/search", data={"image": (io.BytesIO(b"x" * 5000), "big.jpg")},
                                    content_type="multipart/form-data")
    assert answer.status_code == 413 and "error" in answer.get_json()
