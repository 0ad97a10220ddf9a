"""The web page in a real headless Chromium: upload an image, see the answer.

Set TRUSTAD_WEB_SCREENSHOT=/some/file.png to keep a copy of the screenshot to look at.
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import make_tiny_vit
from model_helpers import RES, ServerThread, make_image, require

from trustad.model import FittedDetector

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def browser():
    webdriver = require("selenium.webdriver")
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing (scripts/setup.sh installs them)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1366,900",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_upload_shows_probability_and_overlay(tmp_path):
    require("fastapi")
    require("uvicorn")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from trustad.serve import create_app

    size = (320, 240)
    good = [make_image(tmp_path / f"good{i}.png", i, size=size) for i in range(3)]
    cal = [make_image(tmp_path / f"cal{i}.png", 50 + i, size=size) for i in range(4)]
    cal += [make_image(tmp_path / f"bad{i}.png", 80 + i, True, size=size) for i in range(3)]
    model = FittedDetector(make_tiny_vit(), resolution=RES, conformal_alpha=0.5).fit(
        good, cal, [0, 0, 0, 0, 1, 1, 1]
    )
    test_image = make_image(tmp_path / "part_17.png", 99, True, size=size)
    (want,) = model.predict([test_image], maps=False)

    with ServerThread(create_app(model)) as server:
        driver = browser()
        try:
            driver.get(server.url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: "support image" in d.find_element(By.ID, "model-info").text)
            driver.find_element(By.ID, "file").send_keys(str(test_image))
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
            shown = driver.find_element(By.ID, "probability").text
            assert float(shown) == pytest.approx(want.probability, rel=1e-3)
            interval = driver.find_element(By.ID, "probability-interval").text
            low, high = want.probability_interval
            assert interval.startswith("90 % credible interval") and f"{low:.4f}"[:4] in interval
            reason = driver.find_element(By.ID, "flag-reason").text
            assert reason == (want.flag_reason or "")
            gated = driver.find_element(By.ID, "gated_probability").text
            assert float(gated) == pytest.approx(want.gated_probability, rel=1e-3)
            assert driver.find_element(By.ID, "decision").text == (
                "anomalous" if want.decision else "normal"
            )
            overlay = driver.find_element(By.ID, "overlay")
            assert overlay.get_attribute("src").startswith("data:image/png;base64,")
            wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", overlay))
            assert driver.execute_script("return arguments[0].naturalWidth", overlay) == size[0]
            assert overlay.is_displayed() and overlay.size["width"] > 200
            shot = tmp_path / "web.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("TRUSTAD_WEB_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["TRUSTAD_WEB_SCREENSHOT"])
        finally:
            driver.quit()


def test_page_sends_the_token_it_is_given(tmp_path):
    """With a token the page says what is missing, then works once the token is entered
    (kept in the browser for the next visit)."""
    require("fastapi")
    require("uvicorn")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from trustad.serve import create_app

    good = [make_image(tmp_path / f"good{i}.png", i) for i in range(2)]
    model = FittedDetector(make_tiny_vit(), resolution=RES, calibrator=None).fit(good)
    test_image = make_image(tmp_path / "part.png", 99, True)
    (want,) = model.predict([test_image], maps=False)

    with ServerThread(create_app(model, token="t0ken")) as server:
        driver = browser()
        try:
            driver.get(server.url + "/")
            wait = WebDriverWait(driver, 60)
            info = driver.find_element(By.ID, "model-info")
            wait.until(lambda d: "needs a token" in info.text)
            driver.find_element(By.ID, "token").send_keys("t0ken", Keys.TAB)
            wait.until(lambda d: "support image" in info.text)
            driver.get(server.url + "/")  # the token is remembered
            wait.until(lambda d: "support image" in d.find_element(By.ID, "model-info").text)
            driver.find_element(By.ID, "file").send_keys(str(test_image))
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
            assert float(driver.find_element(By.ID, "score").text) == pytest.approx(
                want.score, rel=1e-3
            )
        finally:
            driver.quit()
