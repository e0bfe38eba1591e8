"""``relprop serve`` as a person uses it: the real command on the embedded model, driven in
Chromium by Playwright (Debian's ``chromium`` package; Playwright cannot download its own
browsers here). It writes the README's screenshot, docs/serve.png."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

DOCS = Path(__file__).resolve().parents[1] / "docs"
MODEL = "efficientnet_lite0"
IDLE = "document.body.dataset.busy === 'false'"
WAIT_MS = 90_000


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None or importlib.util.find_spec("playwright") is None:
        why = ("Chromium or Playwright is missing: apt-get install -y chromium, and "
               "pip install -e '.[test]' (.ci/run does both)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``relprop serve`` on a free port with a --images folder; its address."""
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(skimage.data.coffee()).save(folder / "espresso.png")
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "relprop", "serve", "--model", MODEL, "--device", "cpu",
             "--port", "0", "--images", str(folder)], stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _address(process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0 or process.returncode < 0, log.read_text()


def _address(process, log: Path, timeout: float = 120) -> str:
    """The address the server prints, once it answers."""
    deadline, url = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"relprop serve stopped (exit {process.returncode}): {log.read_text()}")
        found = re.search(r"at (http://\S+/)", log.read_text())
        url = found.group(1) if found else None
        if url:
            try:
                with urllib.request.urlopen(url + "api/models", timeout=5) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.2)
    pytest.fail(f"relprop serve did not answer within {timeout} s: {log.read_text()}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    executable = _chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


def maps(page) -> dict:
    """Each panel's map as the page shows it (the coloured layer's data URL), by method."""
    return page.eval_on_selector_all(
        "#panels .panel[data-method]",
        "panels => Object.fromEntries(panels.map(p => [p.dataset.method, "
        "p.querySelector('img.layer').src]))")


def settle(page):
    """Wait until every requested map has come back."""
    page.wait_for_timeout(50)
    page.wait_for_function(IDLE, timeout=WAIT_MS)


def set_opacity(page, value: float):
    page.eval_on_selector("#opacity", f"e => {{ e.value = '{value}'; "
                                      "e.dispatchEvent(new Event('input')) }")


def assert_no_error(page, console: list):
    assert page.is_hidden("#error"), page.inner_text("#error")
    states = page.eval_on_selector_all("#panels .panel[data-method]",
                                       "ps => ps.map(p => p.dataset.state)")
    assert states and set(states) == {"done"}, states
    covered = page.eval_on_selector_all(  # a finished map has nothing drawn over it
        "#panels .panel[data-method] .status", "ss => ss.filter(s => s.offsetParent).length")
    assert covered == 0
    assert "Traceback" not in page.inner_text("body")
    assert console == []


def test_a_person_explains_a_photo(server, browser, tmp_path):
    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    page = browser.new_page(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    console = []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(str(e)))
    page.goto(server)
    page.wait_for_selector("#methods input[value=rap]")
    assert MODEL in page.inner_text("#model")
    samples = page.eval_on_selector_all("#sample option", "os => os.map(o => o.value)")
    assert "chelsea" in samples and "espresso.png" in samples

    # upload a photo: the top-5 and one map per default method
    page.set_input_files("#file", str(photo))
    settle(page)
    predictions = page.locator("#predictions button")
    assert predictions.count() == 5
    assert predictions.nth(0).inner_text().startswith("Egyptian cat")
    assert "Egyptian cat" in page.inner_text("#explained")
    first = maps(page)
    assert set(first) == {"rap", "rap-stable", "lrp-epsilon-plus", "gradient-x-input", "grad-cam"}
    assert len(set(first.values())) == len(first)  # every method its own map
    assert_no_error(page, console)

    # click another predicted class: every map changes
    predictions.nth(2).click()
    settle(page)
    assert "tabby" in page.inner_text("#explained")
    assert "selected" in predictions.nth(2).get_attribute("class")
    tabby = maps(page)
    assert all(tabby[m] != first[m] for m in first), "a map did not change with the class"
    assert_no_error(page, console)

    # switch methods: one more, one fewer
    page.check("#methods input[value=lrp-epsilon-alpha2beta1]")
    page.uncheck("#methods input[value=rap-stable]")
    settle(page)
    switched = maps(page)
    assert "rap-stable" not in switched
    assert switched["lrp-epsilon-alpha2beta1"] not in tabby.values()
    assert_no_error(page, console)

    page.screenshot(path=str(DOCS / "serve.png"), full_page=True)

    # a layer inside the network: the propagation methods' maps change, the gradients' do not
    layer = page.eval_on_selector_all("#layer option", "os => os.map(o => o.value)")[33]
    page.select_option("#layer", layer)
    settle(page)
    inside = maps(page)
    for method in ("rap", "lrp-epsilon-plus", "lrp-epsilon-alpha2beta1"):
        assert inside[method] != switched[method]
        assert layer in page.inner_text(f".panel[data-method={method}] h3")
    assert inside["gradient-x-input"] == switched["gradient-x-input"]
    assert "Σ R (this layer)" in page.inner_text(".panel[data-method=rap] .numbers")
    assert_no_error(page, console)

    # opacity and views are drawn in the page, without a request
    set_opacity(page, 1)
    opacity = page.eval_on_selector(".panel[data-method=rap] img.layer",
                                    "e => getComputedStyle(e).opacity")
    assert opacity == "1"
    page.check("input[name=view][value=heatmap]")
    assert page.is_visible(".panel[data-method=rap] img.heatmap")
    assert page.is_hidden(".panel[data-method=rap] img.layer")
    page.check("input[name=sign][value=negative]")
    settle(page)
    assert maps(page)["rap"] != inside["rap"]
    assert_no_error(page, console)

    # downloads: a heat map PNG and the JSON of what is shown
    with page.expect_download() as download:
        page.click(".panel[data-method=rap] .heatmap-link")
    assert np.asarray(Image.open(download.value.path())).shape == (224, 224, 3)
    with page.expect_download() as download:
        page.click("#download-json")
    shown = json.loads(Path(download.value.path()).read_text())
    assert shown["explained"]["name"] == "tabby" and shown["layer"] == layer
    assert shown["sign"] == "negative"
    assert [p["method"] for p in shown["panels"]] == list(inside)
    assert shown["panels"][0]["layer"] == layer

    # a file that is no picture: the page says so in words, and the server goes on
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    page.set_input_files("#file", str(notes))
    settle(page)
    message = page.inner_text("#error")
    assert page.is_visible("#error") and "not an image" in message and "Traceback" not in message
    console.clear()  # the browser logs each 400 answer
    page.select_option("#sample", "espresso.png")
    settle(page)
    assert page.locator("#predictions button").nth(0).inner_text().startswith("espresso")
    assert_no_error(page, console)
    page.close()
