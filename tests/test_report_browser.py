"""report.html opened in headless Chromium: every section present, every figure decoded,
Table 1 showing the numbers of results.csv. Screenshots of each section are saved as
/tmp/trustad_report_<section>.png for a person to look at."""

from __future__ import annotations

import csv
import os
import shutil
import statistics
from pathlib import Path

import pytest
from test_study import quick
from tiny_trustad import TINY_SHA, tiny_backbone

from trustad.evaluation import Evaluation
from trustad.report import SECTIONS, write_study_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytest.skip(
        "chromium and chromium-driver are not installed (scripts/setup.sh installs them)",
        allow_module_level=True,
    )
if os.environ.get("CI"):  # CI installs both (scripts/setup.sh): a missing one is a failure
    from selenium import webdriver
else:
    webdriver = pytest.importorskip("selenium.webdriver")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from trustad.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        root, categories=("brick", "gravel"), n_train=4, n_test_good=6, n_test_defect=10,
        size=64, seed=0,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("run")
    settings = quick(root, save_examples=2, calibration_fraction=0.3)
    Evaluation(settings, tiny_backbone(), out, progress=False).run()
    return write_study_report(out)["html"]


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", "--window-size=1300,2600",
    ):  # fmt: skip
        options.add_argument(arg)
    if CHROMIUM:
        options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_in_a_browser(report, browser):
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    assert browser.title.startswith("trustad report")
    for section in SECTIONS:
        element = browser.find_element(By.ID, section)
        assert element.find_element(By.TAG_NAME, "h2").text
        # Element screenshots are clipped to the window: make it as tall as the section.
        height = browser.execute_script("return arguments[0].scrollHeight", element)
        browser.set_window_size(1300, max(800, height + 250))
        browser.execute_script("arguments[0].scrollIntoView()", element)
        element.screenshot(f"/tmp/trustad_report_{section}.png")
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 4  # Figures 1b, 4, 5 and the flags
    for img in images:  # decoded from the page itself: nothing is fetched
        assert browser.execute_script("return arguments[0].naturalWidth", img) > 300
    assert "Complete: all 16 result rows" in browser.find_element(By.ID, "status").text

    # Table 1's clean AUROC at 1 shot: per seed the mean over categories of results.csv,
    # then mean and standard deviation over the 2 seeds.
    with (Path(report).parent / "results.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["condition"] == "clean" and r["shots"] == "1"]
    per_seed = [
        statistics.mean(float(r["auroc"]) for r in rows if r["seed"] == seed) for seed in "01"
    ]
    mean, std = statistics.mean(per_seed), statistics.pstdev(per_seed)
    cells = browser.find_elements(By.CSS_SELECTOR, "#table1 tbody tr:first-child td")
    n_cal, n_eval = rows[0]["n_calibration"], rows[0]["n_evaluation"]
    assert cells[2].text == f"{n_cal} / {n_eval}"  # the images each cell rests on
    assert cells[4].text.startswith(f"{mean * 100:.2f} ± {std * 100:.2f} / ")
    assert "Read this first" in browser.find_element(By.ID, "caveats").text
    shown = browser.find_element(By.ID, "settings").text
    assert "shots [1, 2]" in shown and TINY_SHA in shown
