"""The HTML report in a real headless browser (Debian's chromium, driven by selenium): it loads without console
errors and every image it embeds decodes. `make browser` installs chromium; in CI a missing one fails."""

from __future__ import annotations

import os
import shutil

import pytest

from diffusion_lab.report import main as report_main
from synthetic_sweep import example_study

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        message = (
            f"{', '.join(missing)} missing: run `make browser` (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def test_the_html_report_loads_without_errors_and_its_images_decode(tmp_path):
    sweep = example_study(tmp_path / "sweep")
    paths = report_main([str(sweep), "--baseline", "schedule=linear"])
    driver = _browser()
    try:
        driver.get(paths["html"].resolve().as_uri())
        widths = driver.execute_script(
            "return Array.from(document.images, i => i.complete ? i.naturalWidth : 0);"
        )
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        title = driver.title
        tables = len(driver.find_elements("tag name", "table"))
    finally:
        driver.quit()
    assert errors == []
    assert len(widths) == len(list((sweep / "report_plots").glob("*.png"))) + 1  # plots and one sample grid
    assert all(w > 0 for w in widths), widths
    assert title == "Sweep report: sweep" and tables >= 4
