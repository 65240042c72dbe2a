"""`edgesplit serve --dashboard` in a real browser (Debian's chromium and chromium-driver, through Selenium): the
page's numbers move while requests run, a worker unplugged from the page is shown down with degraded answers, and
restored is shown up again."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from edgesplit.data.datasets import load_dataset

CHROMEDRIVER = shutil.which("chromedriver")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    not (CHROMEDRIVER and BROWSER), reason="needs chromium and chromium-driver (make test installs them as root)"
)


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _load(port: int, stop: threading.Event, image: np.ndarray) -> None:
    """Requests over the HTTP/REST API until ``stop`` (at most 60 s), as a camera's client would send them."""
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": image.ravel().tolist()}]}
    ).encode()
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/resnet18-split2/infer", data=body)
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.02)


def _wait(browser, condition, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition(browser)
        if value:
            return value
        time.sleep(0.2)
    browser.save_screenshot("/tmp/edgesplit-dashboard-failure.png")
    raise AssertionError(f"the page never showed {what} (screenshot: /tmp/edgesplit-dashboard-failure.png)")


def test_dashboard_live_unplug_and_restore_in_a_real_browser(random_export, serving):
    from selenium.webdriver.common.by import By

    image = load_dataset("fashion-mnist", "test").data[0]
    with serving("--local", random_export, "--http-port", 0, "--dashboard") as (proc, _):
        port = int(proc.ready_line.split("http=")[1].split()[0])
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(port, stop, image), daemon=True)
        load.start()
        browser = _browser()
        try:
            browser.get(f"http://127.0.0.1:{port}/dashboard")

            def answered(b):
                return int(b.find_element(By.ID, "requests-total").text or 0)

            first = _wait(browser, answered, "requests answered")
            _wait(browser, lambda b: answered(b) > first, "the count of answers moving")
            device = "#devices .device[data-part='branch1']"
            _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, device), "the device branch1")
            assert browser.find_element(By.CSS_SELECTOR, device).get_attribute("data-state") == "up"
            assert browser.find_element(By.ID, "last-answer").text.strip() not in ("", "-")  # its top classes

            browser.find_element(By.ID, "unplug-branch1").click()  # the device is unplugged, from the page
            _wait(
                browser, lambda b: b.find_element(By.CSS_SELECTOR, device).get_attribute("data-state") == "down", "branch1 down"
            )
            _wait(
                browser,
                lambda b: b.find_element(By.ID, "last-answer").get_attribute("data-degraded") == "true",
                "a degraded answer",
            )
            _wait(browser, lambda b: "degraded" in b.find_element(By.ID, "events").text, "degraded answers in the log")
            assert (
                browser.find_element(By.CSS_SELECTOR, "#devices .device[data-part='branch0']").get_attribute("data-state") == "up"
            )

            browser.find_element(By.ID, "restore-branch1").click()
            _wait(
                browser,
                lambda b: b.find_element(By.CSS_SELECTOR, device).get_attribute("data-state") == "up",
                "branch1 up again",
                30,
            )
            _wait(
                browser,
                lambda b: b.find_element(By.ID, "last-answer").get_attribute("data-degraded") == "false",
                "answers in full again",
            )
        finally:
            stop.set()
            browser.quit()
            load.join(15)
