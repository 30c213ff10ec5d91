"""Headless Chromium labels 20 digits through the page (key presses and clicks).

Needs Debian's ``chromium`` + ``chromium-driver`` (``scripts/install_browser.sh``) and ``selenium``;
skipped with a note when they are absent. Set ``NTKAL_SCREENSHOT=path.png`` to keep the screenshot
(``docs/images/label_app.png`` was made that way).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from ntkal.data import load_dataset
from ntkal.labelstore import LabelStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,860")


def _driver(profile: str):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium / chromedriver not installed (run scripts/install_browser.sh)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def test_label_twenty_digits_in_the_browser(tmp_path, label_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = tmp_path / "labels.sqlite"
    truth = load_dataset("digits").y_train.numpy()
    server = label_server(["digits", "--store", str(store), "--width", "32", "--subset", "200",
                           "--warmup", "10"])
    profile = tempfile.mkdtemp(prefix="ntkal-chromium-", dir=tmp_path)
    driver = _driver(profile)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        body = driver.find_element(By.TAG_NAME, "body")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#buttons button")) == 10
        given = {}
        for step in range(20):
            index = int(wait.until(lambda d: body.get_attribute("data-index")))
            wait.until(lambda d: d.execute_script(  # the PNG of this item has loaded
                "const i = document.getElementById('item-image');"
                "return i !== null && i.complete && i.naturalWidth > 0 && "
                "document.body.dataset.index === arguments[0];", str(index)))
            label = int(truth[index])
            if step % 2 == 0:
                body.send_keys(str(label))        # the digit key of the class
            else:
                driver.find_element(By.ID, f"class-{label}").click()
            given[index] = label
            wait.until(lambda d: body.get_attribute("data-index") not in ("", str(index)))
        shown = int(body.get_attribute("data-index"))
        assert shown not in given                 # the queue moved on to an unlabelled item

        with LabelStore(store) as s:
            idx, lab = s.labelled()
        assert len(idx) == 20 and dict(zip(idx.tolist(), lab.tolist())) == given

        # The retrain started after 10 labels; let the dashboard show it, then keep a picture.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.get("/api/stats")["retrain"]["state"] != "done":
            time.sleep(0.5)
        stats = server.get("/api/stats")
        assert stats["labelled"] == 20 and stats["retrain"]["state"] == "done"
        assert stats["curve"] and 0 <= stats["curve"][0]["accuracy"] <= 1
        button = driver.find_element(By.ID, "retrain")
        wait.until(lambda d: button.is_enabled())      # the page has seen the first retrain end
        button.click()                                 # the button: a second point on the curve
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(server.get("/api/stats")["curve"]) < 2:
            time.sleep(0.5)
        stats = server.get("/api/stats")
        assert [p["labels"] for p in stats["curve"]] == [10, 20]
        if stats["phase"] == "look-ahead":  # one more label, so the page shows a look-ahead pick
            index = int(body.get_attribute("data-index"))
            body.send_keys(str(int(truth[index])))
            wait.until(lambda d: body.get_attribute("data-index") not in ("", str(index)))
        time.sleep(2.0)  # the dashboard refreshes every 1.5 s
        shot = tmp_path / "label_app.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("NTKAL_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
    except Exception:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        print("page messages:", driver.find_element(By.ID, "message").text)
        print("server log:", server.log.read_text(errors="replace")[-3000:])
        raise
    finally:
        driver.quit()
