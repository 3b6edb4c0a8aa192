"""``fastlenet demo``: the page is self-contained, and in a real browser it reads drawn
digits as fastlenet does.

The browser test runs headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
through Selenium, with the system's browser and driver only (nothing is downloaded). It
redraws real MNIST test digits stroke by stroke with the mouse (one with touch), then
checks, for every zoo model, that the page's 28x28 digit is what fastlenet.imageprep makes
of the canvas's pixels, that its input is fastlenet.data.preprocess of that digit, and
that its class probabilities match fastlenet's forward pass within 1e-4. It skips, saying
why, only when no browser is installed. Set FASTLENET_DEMO_SCREENSHOTS=DIR to keep the
screenshots it takes.
"""

import base64
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fastlenet.checkpoint import load_model
from fastlenet.cli import main
from fastlenet.data import load_dataset, preprocess
from fastlenet.demo import page_model, render_page
from fastlenet.imageprep import digit_from_array, to_grayscale
from fastlenet.nn import MODELS

from helpers import assert_one_line_error, custom_model
from strokes import strokes

DIGITS = (0, 1, 2, 3)  # MNIST test images 7, 2, 1, 0
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--window-size=1200,1500"]


# ------------------------------------------------------------------ the page itself
@pytest.mark.parametrize("name", list(MODELS))
def test_page_is_one_self_contained_file(zoo_checkpoints, name):
    model, meta = load_model(zoo_checkpoints[name], backend="numpy")
    page = render_page(model, meta)
    # nothing fetched: no external script, style, image, font or URL
    assert not re.search(r"https?://|<script[^>]+src|<link|@import|url\(", page)
    assert "/*STYLE*/" not in page and "/*SCRIPT*/" not in page and "/*MODEL*/" not in page
    embedded = json.loads(re.search(r'<script type="application/json" id="model">(.*?)</script>',
                                    page, re.S).group(1).replace("<\\/", "</"))
    assert embedded == json.loads(json.dumps(page_model(model, meta)))
    state = model.state_dict()
    conv = embedded["layers"][0]
    assert conv["kind"] == "conv2d" and conv["label"].startswith("layer 0: Conv2d(1,")
    weights = np.frombuffer(base64.b64decode(conv["weight"]), dtype="<f4")
    np.testing.assert_array_equal(weights, state["0.weight"].ravel())
    assert embedded["mean"] == meta["mean"] and embedded["class_names"] == [str(c) for c in range(10)]


def test_demo_command_writes_the_page_and_reports_errors(zoo_checkpoints, tmp_path, capsys):
    out = tmp_path / "sub" / "digit.html"
    assert main(["demo", str(zoo_checkpoints["lenet5"]), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "open it in a browser" in capsys.readouterr().out

    foreign = tmp_path / "other.npz"
    data = dict(np.load(zoo_checkpoints["lenet5"]))
    meta = json.loads(str(data["meta"]))
    meta["model"] = "resnet"
    data["meta"] = np.array(json.dumps(meta))
    np.savez(foreign, **data)
    assert main(["demo", str(foreign), "-o", str(tmp_path / "x.html")]) == 2
    assert_one_line_error(capsys.readouterr().err, "unknown model 'resnet'", "this fastlenet knows")

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["demo", str(zoo_checkpoints["lenet5"]), "-o", str(blocker / "digit.html")]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot write", "choose another output path")

    checkpoint = tmp_path / "copy.npz"  # never written over by the page
    checkpoint.write_bytes(zoo_checkpoints["lenet5"].read_bytes())
    assert main(["demo", str(checkpoint), "-o", str(checkpoint)]) == 2
    assert_one_line_error(capsys.readouterr().err, "is the checkpoint itself")
    assert checkpoint.read_bytes() == zoo_checkpoints["lenet5"].read_bytes()


# ------------------------------------------------------------------ in a browser
def _browser_paths():
    """(chromium, chromedriver) from the system, or pytest.skip saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'fastlenet[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no headless browser here: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="fastlenet-chromium-")
    for arg in CHROME_ARGS + [f"--user-data-dir={profile}"]:
        options.add_argument(arg)
    # An explicit driver path keeps Selenium Manager (which would try to download a
    # browser or driver) out of the way; SE_OFFLINE makes sure it stays offline.
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def settled(driver) -> dict:
    """The page's result once every stroke drawn so far has been processed."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.fastlenetDemo.settled().then(done);")


def draw(driver, canvas, digit: np.ndarray, touch: bool = False) -> None:
    """Redraw ``digit`` (28x28) on the 280x280 canvas, stroke by stroke."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    kind = interaction.POINTER_TOUCH if touch else interaction.POINTER_MOUSE
    actions = ActionBuilder(driver, mouse=PointerInput(kind, "finger" if touch else "mouse"),
                            duration=0)
    pointer = actions.pointer_action
    for line in strokes(digit):
        # offsets from the canvas's centre, in CSS pixels (10 per MNIST pixel)
        # every third point of the skeleton (and its end): the page joins them with straight lines
        line = line[::3] + line[-1:] if len(line) > 3 else line
        points = [(int((x + 0.5) * 10) - 140, int((y + 0.5) * 10) - 140) for x, y in line]
        pointer.move_to(canvas, *points[0]).pointer_down()
        for point in points[1:]:
            pointer.move_to(canvas, *point)
        pointer.pointer_up()
    actions.perform()


def check_against_fastlenet(driver, model, meta, result: dict) -> None:
    # 1. the digit is what imageprep makes of the canvas's pixels (predict's steps)
    from PIL import Image

    url = driver.execute_script("return window.fastlenetDemo.pixels();")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as canvas:
        assert canvas.size == (280, 280) and canvas.mode == "RGBA"
        expected_digit = digit_from_array(to_grayscale(canvas))
    digit = np.array(result["digit"], dtype=np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(digit, expected_digit)
    # 2. the input is preprocess's, value for value (both round to float32)
    x = preprocess(digit[None], meta["mean"], meta["std"])
    np.testing.assert_array_equal(np.array(result["input"], dtype=np.float32), x.ravel())
    # 3. probabilities and the predicted class from fastlenet's forward pass
    proba = model.predict_proba(x)[0]
    np.testing.assert_allclose(result["probabilities"], proba, rtol=0, atol=1e-4)
    assert result["predicted"] == int(np.argmax(proba))


@pytest.mark.parametrize("name", list(MODELS))
def test_drawn_mnist_digits_read_as_fastlenet_reads_them(browser, zoo_checkpoints, tmp_path, name):
    from selenium.webdriver.common.by import By

    page = tmp_path / f"{name}.html"
    assert main(["demo", str(zoo_checkpoints[name]), "-o", str(page)]) == 0
    model, meta = load_model(zoo_checkpoints[name], backend="numpy")
    browser.get(page.as_uri())
    canvas = browser.find_element(By.ID, "pad")
    mnist = load_dataset("mnist")
    agree = 0
    for i in DIGITS:
        browser.execute_script("window.fastlenetDemo.clear();")
        draw(browser, canvas, mnist.test_images[i], touch=(i == 1))
        result = settled(browser)
        check_against_fastlenet(browser, model, meta, result)
        agree += result["predicted"] == mnist.test_labels[i]
        shown = browser.find_element(By.ID, "predicted").text
        assert shown == str(result["predicted"])
    # every conv and pooling layer's maps are drawn, one canvas per map (a strip for 1x1)
    tiles = browser.find_elements(By.CSS_SELECTOR, "#maps .tiles canvas")
    assert len(tiles) == sum(1 if h * w == 1 else c for c, h, w in
                             (layer["out_shape"] for layer in page_model(model, meta)["layers"]
                              if layer["kind"] in ("conv2d", "maxpool2d", "avgpool2d")))
    keep = os.environ.get("FASTLENET_DEMO_SCREENSHOTS")
    shot = (Path(keep) if keep else tmp_path) / f"demo-{name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the models trained 2 epochs on 1,100 images still read most redrawn digits
    assert agree >= 3, f"{agree} of {len(DIGITS)} redrawn digits read right"


def test_every_layer_kind_runs_in_the_page(browser, tmp_path):
    """A custom model with every layer fastlenet.nn has (strided and padded convolutions,
    BatchNorm on maps and vectors, sigmoid, tanh, both poolings, the fused ReLU + max-pool,
    a nested Sequential) and five classes."""
    from selenium.webdriver.common.by import By

    model = custom_model()
    meta = {"mean": 0.13, "std": 0.31, "class_names": list("abcde"), "dataset": "custom"}
    page = tmp_path / "custom.html"
    page.write_text(render_page(model, meta), encoding="utf-8")
    browser.get(page.as_uri())
    draw(browser, browser.find_element(By.ID, "pad"), load_dataset("mnist").test_images[5])
    result = settled(browser)
    assert len(result["probabilities"]) == 5
    check_against_fastlenet(browser, model, meta, result)


def test_clear_and_reset_buttons(browser, zoo_checkpoints, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "page.html"
    assert main(["demo", str(zoo_checkpoints["lenet5"]), "-o", str(page)]) == 0
    browser.get(page.as_uri())
    canvas = browser.find_element(By.ID, "pad")
    browser.execute_script("const pen = document.getElementById('pen'); pen.value = 30;"
                           "pen.dispatchEvent(new Event('input'));")
    draw(browser, canvas, load_dataset("mnist").test_images[0])
    assert settled(browser)["predicted"] is not None
    browser.find_element(By.ID, "clear").click()
    assert settled(browser)["digit"] is None
    assert browser.find_element(By.ID, "predicted").text == "?"
    assert browser.find_element(By.ID, "pen").get_attribute("value") == "30"  # Clear keeps it
    draw(browser, canvas, load_dataset("mnist").test_images[1])
    assert settled(browser)["predicted"] is not None
    browser.find_element(By.ID, "reset").click()
    assert settled(browser)["digit"] is None
    assert browser.find_element(By.ID, "pen").get_attribute("value") == "18"
    assert not browser.find_element(By.ID, "bars").text.strip("0123456789\n ")
