"""Driving ``hubtrain serve`` in a real headless browser: Debian's Chromium and chromium-driver through Selenium.

Nothing is downloaded: the browser is the distribution's (``apt-get install chromium chromium-driver``); where it
is missing, tests that need it skip and say so. ``.ci/run`` installs it and sets ``HUBTRAIN_REQUIRE_BROWSER=1``,
which turns that skip into a failure, so CI runs them or fails.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,860")


def _missing(reason: str) -> None:
    if os.environ.get("HUBTRAIN_REQUIRE_BROWSER") == "1":  # CI installed the browser: a skip would hide a failure
        pytest.fail(f"HUBTRAIN_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def chromium_paths() -> tuple[str, str]:
    """(browser, driver), or skip the test with the reason and the install command."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        _missing("no Chromium: install Debian's `chromium chromium-driver` (apt-get) to run the browser test")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("the browser test drives Chromium with Selenium: pip install 'hubtrain[browser]'")
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(folder: str | os.PathLike, *args: str, timeout: float = 180) -> Iterator[str]:
    """``hubtrain serve FOLDER`` in a subprocess; yields the URL it printed; stops it afterwards."""
    hubtrain = str(Path(sys.executable).parent / "hubtrain")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([hubtrain, "serve", str(folder), "--port", str(free_port()), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"hubtrain serve exited {proc.returncode}:\n{''.join(seen)[-3000:]}")
            seen.append(line)
            if line.startswith("hubtrain serve: http"):
                yield line.split()[2]
                return
        raise AssertionError(f"hubtrain serve printed no URL within {timeout} s:\n{''.join(seen)[-3000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Selenium WebDriver) with a fresh profile, closed afterwards."""
    browser, driver_path = chromium_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="hubtrain-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition, timeout: float = 120, every: float = 0.25):
    """Poll ``condition()`` until it returns something truthy; return it (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the element is not there yet, or was re-rendered under us
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for the page")


def classify_in_page(driver, url: str, image: str | os.PathLike) -> list[tuple[str, float]]:
    """Upload ``image`` on a classifier's page, press Predict, read the top-5 bars: [(label, score), ...]."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0].send_keys(str(image))
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#input-image img"))
    driver.find_element(By.ID, "predict").click()
    meters = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#prediction meter"))
    return [(m.get_attribute("aria-label"), float(m.get_attribute("value"))) for m in meters]


def generate_in_page(driver, url: str, prompt: str, max_tokens: int, expected_len: int | None = None) -> str:
    """Type ``prompt`` on a language model's page, set max new tokens, press Generate, return the streamed text once
    it stops changing."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url)
    box = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#prompt textarea"))
    box.clear()
    box.send_keys(prompt)
    number = driver.find_element(By.CSS_SELECTOR, "#max-tokens input[type=number]")
    number.send_keys(Keys.CONTROL, "a")
    number.send_keys(str(max_tokens), Keys.TAB)
    driver.find_element(By.ID, "generate").click()
    output = driver.find_element(By.CSS_SELECTOR, "#generated textarea")
    wait_for(lambda: output.get_attribute("value"))
    last, stable_since = None, time.monotonic()
    while time.monotonic() - stable_since < 3:  # the stream has ended when the text stops changing
        value = output.get_attribute("value")
        if value != last:
            last, stable_since = value, time.monotonic()
        time.sleep(0.2)
    return last
