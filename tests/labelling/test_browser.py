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

try:
    from selenium.webdriver.common.keys import Keys
except ImportError:  # skipped in _driver
    Keys = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,860",
)


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
    server = label_server(
        ["digits", "--store", str(store), "--width", "32", "--subset", "200", "--warmup", "10"]
    )
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
            wait.until(
                lambda d, index=index: d.execute_script(  # the PNG of this item has loaded
                    "const i = document.getElementById('item-image');"
                    "return i !== null && i.complete && i.naturalWidth > 0 && "
                    "document.body.dataset.index === arguments[0];",
                    str(index),
                )
            )
            label = int(truth[index])
            if step % 2 == 0:
                body.send_keys(str(label))  # the digit key of the class
            else:
                driver.find_element(By.ID, f"class-{label}").click()
            given[index] = label
            wait.until(
                lambda d, index=index: body.get_attribute("data-index") not in ("", str(index))
            )
        shown = int(body.get_attribute("data-index"))
        assert shown not in given  # the queue moved on to an unlabelled item
        # The page sets data-index when it shows the next item and records the latency a frame
        # later (once it is drawn), so the last one may still be on its way.
        wait.until(lambda d: len(d.execute_script("return window.ntkalLatencies")) >= 20)
        perceived = driver.execute_script("return window.ntkalLatencies")
        assert len(perceived) == 20 and all(ms > 0 for ms in perceived)
        print(
            f"key -> next item drawn (warm-up, 20 labels): median "
            f"{sorted(perceived)[10]:.0f} ms, max {max(perceived):.0f} ms"
        )

        with LabelStore(store) as s:
            idx, lab = s.labelled()
        assert len(idx) == 20 and dict(zip(idx.tolist(), lab.tolist())) == given

        # The retrain started after 10 labels; let the dashboard show it, then keep a picture.
        deadline = time.monotonic() + 90
        while (
            time.monotonic() < deadline and server.get("/api/stats")["retrain"]["state"] != "done"
        ):
            time.sleep(0.5)
        stats = server.get("/api/stats")
        assert stats["labelled"] == 20 and stats["retrain"]["state"] == "done"
        assert stats["curve"] and 0 <= stats["curve"][0]["accuracy"] <= 1
        button = driver.find_element(By.ID, "retrain")
        wait.until(lambda d: button.is_enabled())  # the page has seen the first retrain end
        button.click()  # the button: a second point on the curve
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(server.get("/api/stats")["curve"]) < 2:
            time.sleep(0.5)
        stats = server.get("/api/stats")
        assert [p["labels"] for p in stats["curve"]] == [10, 20]
        if stats["phase"] == "look-ahead":  # one more label, so the page shows a look-ahead pick
            index = int(body.get_attribute("data-index"))
            body.send_keys(str(int(truth[index])))
            wait.until(lambda d: body.get_attribute("data-index") not in ("", str(index)))
        driver.set_window_size(1280, 1240)  # room for the history and skipped panels
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


def _ready(driver, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return wait, driver.find_element(By.TAG_NAME, "body")


def _idle(wait):
    wait.until(
        lambda d: d.execute_script(
            "return document.body.dataset.busy === '' || document.body.dataset.busy === undefined"
        )
    )


def test_fast_keys_skip_space_and_relabel_in_the_browser(tmp_path, label_server):
    """Keys typed faster than the server answers are all stored, in order, each on the item shown
    when its turn came; Esc moves on and lists the item; Space after a click labels nothing; a
    label changed in the history panel is changed in the store (as a logged event)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    store = tmp_path / "labels.sqlite"
    server = label_server(
        ["digits", "--store", str(store), "--width", "16", "--subset", "100", "--warmup", "1000"]
    )
    driver = _driver(tempfile.mkdtemp(prefix="ntkal-chromium-", dir=tmp_path))
    try:
        wait, body = _ready(driver, server)
        first = body.get_attribute("data-index")
        body.send_keys("3791")  # four keys at once, before any answer
        wait.until(lambda d: len(LabelStore(store).labelled()[0]) == 4)
        _idle(wait)
        with LabelStore(store) as s:
            idx, lab = s.labelled()
        assert lab.tolist() == [3, 7, 9, 1] and len(set(idx.tolist())) == 4
        assert str(idx[0]) == first
        assert len(driver.execute_script("return window.ntkalLatencies")) == 4

        shown = body.get_attribute("data-index")
        body.send_keys(Keys.ESCAPE)  # skip: the next item differs
        wait.until(lambda d: body.get_attribute("data-index") not in ("", shown))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#skipped a[data-index="{shown}"]'))

        before = body.get_attribute("data-index")
        driver.find_element(By.ID, "class-5").click()  # a click, then Space: one label only
        wait.until(lambda d: body.get_attribute("data-index") != before)
        ActionChains(driver).send_keys(" ").perform()  # to whatever has the focus now
        _idle(wait)
        time.sleep(0.3)
        with LabelStore(store) as s:
            assert len(s) == 5 and s.label_of(int(before)) == 5

        target = int(idx[1])  # labelled 7 above: change it to 2
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f'#history select[data-index="{target}"]')
        )
        Select(
            driver.find_element(By.CSS_SELECTOR, f'#history select[data-index="{target}"]')
        ).select_by_value("2")
        wait.until(lambda d: LabelStore(store).label_of(target) == 2)
        with LabelStore(store) as s:
            assert [(c["index"], c["previous"], c["label"]) for c in s.changes()] == [
                (target, 7, 2)
            ]
            assert len(s) == 5
        driver.find_element(By.ID, "help-button").click()
        assert "Keyboard shortcuts" in driver.find_element(By.ID, "help").text
    except Exception:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        print("server log:", server.log.read_text(errors="replace")[-3000:])
        raise
    finally:
        driver.quit()


def test_photos_at_their_own_resolution_and_filenames_exported(tmp_path, label_server):
    """A 400x300 photo run with --image-size 16,16 is shown as the 400x300 file (the model input
    is a separate small rendering), its file name is on the page and in the export."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(
            folder / f"photo_{i:02d}.png"
        )
    server = label_server(
        [
            str(folder),
            "--store",
            str(tmp_path / "p.sqlite"),
            "--classes",
            "cat,dog",
            "--image-size",
            "16,16",
            "--width",
            "16",
            "--warmup",
            "1000",
        ]
    )
    driver = _driver(tempfile.mkdtemp(prefix="ntkal-chromium-", dir=tmp_path))
    try:
        wait, body = _ready(driver, server)
        size = wait.until(
            lambda d: d.execute_script(
                "const i = document.getElementById('item-image');"
                "if (!i || !i.complete || !i.naturalWidth) return null;"
                "const r = i.getBoundingClientRect(), b = 2 * i.clientLeft;"
                "return [i.naturalWidth, i.naturalHeight, Math.round(r.width - b), Math.round(r.height - b)];"
            )
        )
        assert size == [400, 300, 400, 300]
        name = driver.find_element(By.ID, "item-origin").text
        assert name.startswith("photo_") and name.endswith(".png")
        index = body.get_attribute("data-index")
        body.send_keys("2")  # "dog"
        wait.until(lambda d: body.get_attribute("data-index") not in ("", index))
        exported = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(document.getElementById('export-json').href).then(r => r.json()).then(done);"
        )
        assert [(r["file"], r["class"]) for r in exported["labels"]] == [(name, "dog")]
    except Exception:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        print("server log:", server.log.read_text(errors="replace")[-3000:])
        raise
    finally:
        driver.quit()


def _lookahead_pick(data, weights, labelled, labels, strategy):
    """The first pick of a new sequential session on ``labelled`` / ``labels``, computed here
    from the server's saved weights (the whole pool scored and E = every candidate, so the
    server's seeds do not enter)."""
    import numpy as np
    import torch

    from ntkal.labelling import default_train_config
    from ntkal.learner import ActiveLearner
    from ntkal.models import build_model
    from ntkal.strategies import get_strategy

    model = build_model("mlp", data.in_shape, data.num_classes, width=16)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["model_state"])
    learner = ActiveLearner(
        model,
        get_strategy(strategy),
        data.x_train,
        labelled=np.asarray(labelled),
        labels=np.asarray(labels),
        num_classes=data.num_classes,
        train_config=default_train_config(1),
        mode="sequential",
        subset=data.num_train,
        seed=0,
    )
    return int(learner.query(1)[0])


def test_relabel_from_the_history_changes_the_next_pick(tmp_path, label_server):
    """After the first retrain, changing an earlier label in the history panel stores it and the
    page shows the look-ahead pick of the corrected labels (computed here independently from the
    saved weights), which differs from the pick of the labels as they were."""
    from pathlib import Path

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    store = tmp_path / "labels.sqlite"
    data = load_dataset("digits", train_size=150, seed=0)
    truth = data.y_train.numpy()
    server = label_server(
        [
            "digits",
            "--store",
            str(store),
            "--train-size",
            "150",
            "--width",
            "16",
            "--subset",
            "1000",
            "--warmup",
            "8",
            "--epochs",
            "1",
            "--strategy",
            "mlmoc",
        ]
    )
    driver = _driver(tempfile.mkdtemp(prefix="ntkal-chromium-", dir=tmp_path))
    try:
        wait, body = _ready(driver, server)
        for _ in range(8):
            index = int(wait.until(lambda d: body.get_attribute("data-index")))
            body.send_keys(str(int(truth[index])))
            wait.until(
                lambda d, index=index: body.get_attribute("data-index") not in ("", str(index))
            )
        WebDriverWait(driver, 120).until(
            lambda d: server.get("/api/stats")["retrain"]["state"] == "done"
        )
        weights = Path(str(store) + ".weights.pt")
        assert weights.is_file()
        with LabelStore(store) as s:
            idx, lab = s.labelled()
        before = _lookahead_pick(data, weights, idx, lab, "mlmoc")
        change = None
        for pos in range(len(idx)):  # a correction that moves the pick (most do)
            for new in ((lab[pos] + 1) % 10, (lab[pos] + 5) % 10):
                lab2 = lab.copy()
                lab2[pos] = new
                after = _lookahead_pick(data, weights, idx, lab2, "mlmoc")
                if after != before:
                    change = (int(idx[pos]), int(new), after)
                    break
            if change is not None:
                break
        assert change is not None, "no single correction moves the pick"
        target, new, after = change
        _idle(wait)
        select = wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f'#history select[data-index="{target}"]')
        )[0]
        Select(select).select_by_value(str(new))
        wait.until(lambda d: LabelStore(store).label_of(target) == new)
        wait.until(lambda d: body.get_attribute("data-index") == str(after))
        assert "look-ahead" in driver.find_element(By.ID, "item-source").text
    except Exception:
        driver.save_screenshot(str(tmp_path / "failure.png"))
        print("server log:", server.log.read_text(errors="replace")[-3000:])
        raise
    finally:
        driver.quit()
