"""ntkal's backend inside a real Label Studio (Community Edition, SQLite, loopback only).

One Label Studio server for the module, from its own virtual environment
(``scripts/install_labelstudio.sh``; ``make test`` runs it): a project with 40 digit images and a
``Choices`` config, ntkal's backend connected over Label Studio's API, 15 annotations posted
through Label Studio's API. Checked: every annotation reached ntkal's store, the tasks' prediction
scores changed after each, the Data Manager's first task when sorted by prediction score is the
pick of a fresh sequential session on the same labels and weights, a retrain ran, and after
``kill -9`` of the backend no acknowledged annotation is lost (one made while it was down is caught
up). Skipped only when Label Studio is not installed.

``NTKAL_LS_SCREENSHOT=PATH`` also saves a screenshot of the sorted Data Manager (headless
Chromium); the latencies measured are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from ls_doubles import digit_images

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("NTKAL_LABEL_STUDIO_VENV", ROOT / ".venv-labelstudio"))
LS_BIN = LS_VENV / "bin" / "label-studio"
#: A migrated Label Studio database (user and token in it, no project), made by the first run:
#: a fresh database takes minutes of migrations on a busy machine, a migrated one seconds.
TEMPLATE = LS_VENV / ".ntkal-test-template"
USER, PASSWORD = "ann@example.com", "ntkal-test-pass"
CLASSES = [str(d) for d in range(10)]
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="digit" toName="image" choice="single" showInline="true">'
    + "".join(f'<Choice value="{c}"/>' for c in CLASSES)
    + "</Choices></View>"
)
N_TASKS, N_ANNOTATIONS, WARMUP = 40, 15, 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout, what, proc=None, log=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what}: the process exited with {proc.returncode}:\n"
                + (log.read_text(errors="replace")[-3000:] if log else "")
            )
        try:
            value = predicate()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(
        f"{what} within {timeout} s"
        + (":\n" + log.read_text(errors="replace")[-3000:] if log else "")
    )


class Http:
    def __init__(self, url, headers=None):
        self.url, self.headers = url, dict(headers or {})

    def __call__(self, method, path, body=None, raw=None, ctype="application/json", timeout=60):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self.headers
        )
        if data is not None:
            req.add_header("Content-Type", ctype)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
        return json.loads(text) if text.strip() else None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    if not LS_BIN.exists():
        pytest.skip(
            f"Label Studio is not installed in {LS_VENV} (scripts/install_labelstudio.sh "
            "installs it; it could not here, e.g. offline)"
        )
    base = tmp_path_factory.mktemp("label-studio")
    data = base / "data"
    data.mkdir()
    templated = (TEMPLATE / "label_studio.sqlite3").is_file() and (TEMPLATE / "token").is_file()
    if templated:
        token = (TEMPLATE / "token").read_text().strip()
        shutil.copy2(TEMPLATE / "label_studio.sqlite3", data / "label_studio.sqlite3")
    else:
        token = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    port = _free_port()
    log = base / "label-studio.log"
    env = dict(
        os.environ,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        HOME=str(base),
        PYTHONPATH="",
    )
    cmd = [
        str(LS_BIN),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(data),
        "--username",
        USER,
        "--password",
        PASSWORD,
        "--user-token",
        token,
    ]
    fh = open(log, "ab")
    proc = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    api = Http(url, {"Authorization": f"Token {token}"})
    t0 = time.perf_counter()
    try:

        def whoami():
            try:
                return api("GET", "/api/current-user/whoami", timeout=5)
            except urllib.error.HTTPError as err:
                if err.code in (401, 403):  # up, but the token is refused: no use waiting
                    raise RuntimeError(
                        f"Label Studio refused the test's token ({err.code})"
                    ) from err
                raise

        try:
            _wait(whoami, 300, "Label Studio did not answer", proc, log)
        except Exception:
            if templated:  # a damaged template: the next run makes a new one
                shutil.rmtree(TEMPLATE, ignore_errors=True)
            raise
        started = time.perf_counter() - t0
        if not templated:
            _save_template(data / "label_studio.sqlite3", token)
        yield {
            "url": url,
            "api": api,
            "port": port,
            "base": base,
            "log": log,
            "token": token,
            "start_s": started,
            "templated": templated,
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        fh.close()


def _save_template(db: Path, token: str) -> None:
    """Copy the live, just-migrated database (SQLite's backup API) into TEMPLATE, atomically."""
    import sqlite3

    tmp = TEMPLATE.with_name(f"{TEMPLATE.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src, dst = sqlite3.connect(str(db)), sqlite3.connect(str(tmp / "label_studio.sqlite3"))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    (tmp / "token").write_text(token)
    try:
        tmp.rename(TEMPLATE)
    except OSError:  # another run made one meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


class Backend:
    """``python -m ntkal.cli serve-backend`` as a subprocess."""

    def __init__(self, ls, project, store, log):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            sys.executable,
            "-m",
            "ntkal.cli",
            "serve-backend",
            "--strategy",
            "vr",  # its picks are compared with a fresh variance-reduction session
            "--project",
            str(project),
            "--ls-url",
            ls["url"],
            "--ls-token",
            ls["token"],
            "--store",
            str(store),
            "--port",
            str(self.port),
            "--warmup",
            str(WARMUP),
            "--epochs",
            "5",
            "--image-size",
            "8,8",
            "--threads",
            "1",
            "--seed",
            "0",
        ]
        self.log = log
        self.http = Http(self.url)
        self.proc = None

    def start(self):
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(
                [str(ROOT / "src")]
                + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            ),
            NTKAL_QUIET="1",
        )
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=env)
        _wait(
            lambda: self.stats()["scores"]["changes"] >= 0,
            120,
            "the ntkal backend did not start",
            self.proc,
            self.log,
        )
        return self

    def stats(self):
        return self.http("GET", "/ntkal/stats", timeout=10)

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._fh.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_fh", None) is not None and not self._fh.closed:
            self._fh.close()


def _upload(api, project, images):
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file{j}"; '
        f'filename="digit{j:02d}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + blob
        + b"\r\n"
        for j, blob in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return api(
        "POST",
        f"/api/projects/{project}/import",
        raw=body,
        ctype=f"multipart/form-data; boundary={boundary}",
    )


def _sorted_view(api, project, view):
    """The Data Manager's tasks in its view order: ``[(task id, score, annotations)]``."""
    doc = api("GET", f"/api/tasks?project={project}&view={view}&fields=all&page_size=100")
    return [(t["id"], t["predictions_score"], t["total_annotations"]) for t in doc["tasks"]]


def _annotate(api, task_id, choice):
    return api(
        "POST",
        f"/api/tasks/{task_id}/annotations",
        {
            "result": [
                {
                    "from_name": "digit",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [choice]},
                }
            ],
            "was_cancelled": False,
        },
    )


@pytest.fixture(scope="module")
def loop(label_studio, tmp_path_factory):
    """A project, its 40 digits, ntkal's backend connected, and 15 annotations through Label
    Studio (each time the Data Manager's first task, as an annotator working down the sorted
    list would), with what was seen after each."""
    api = label_studio["api"]
    work = tmp_path_factory.mktemp("ntkal-backend")
    project = api("POST", "/api/projects", {"title": "ntkal digits", "label_config": CONFIG})["id"]
    images, truth = digit_images(N_TASKS, seed=1, classes=10, scale=8)  # shown 64x64
    imported = _upload(api, project, images)
    assert imported["task_count"] == N_TASKS
    tasks = api("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true")
    name_of = {t["id"]: t["file_upload"] for t in tasks}
    truth_of = {tid: str(truth[int(name.split("digit")[1][:2])]) for tid, name in name_of.items()}
    store = work / "digits.sqlite"
    t0 = time.perf_counter()
    backend = Backend(label_studio, project, store, work / "backend.log").start()
    phases = {
        "label_studio_start": label_studio["start_s"],
        "backend_start": time.perf_counter() - t0,
    }
    try:
        ml = api("POST", "/api/ml", {"url": backend.url, "project": project, "title": "ntkal"})
        assert ml["readable_state"] == "Connected", ml
        view = api(
            "POST",
            "/api/dm/views",
            {
                "project": project,
                "data": {
                    "title": "ntkal: next pick first",
                    "ordering": ["-tasks:predictions_score"],
                },
            },
        )["id"]
        seen = {
            "before": _sorted_view(api, project, view),
            "after": [],
            "latency": [],
            "annotations": [],
            "picks": [],
            "phases": phases,
        }
        t_all = time.perf_counter()
        for n in range(N_ANNOTATIONS):
            rows = _sorted_view(api, project, view)
            task = (
                rows[0][0] if rows[0][1] is not None else next(t for t, _, k in rows if k == 0)
            )  # no scores before the first label
            changes = backend.stats()["changes"]
            t0 = time.perf_counter()
            ann = _annotate(api, task, truth_of[task])

            def updated(before=changes):
                s = backend.stats()
                fresh = s["scores"]["changes"] > before and s["scores"]["pending_events"] == 0
                return s if fresh else None

            stats = _wait(
                updated,
                60,
                f"scores after annotation {n + 1}",
                backend.proc,
                backend.log,
            )
            seen["latency"].append(time.perf_counter() - t0)
            seen["annotations"].append((ann["id"], task, truth_of[task]))
            seen["after"].append(_sorted_view(api, project, view))
            seen["picks"].append(stats["scores"]["pick_task"])
        phases["annotations"] = time.perf_counter() - t_all
        seen["backend_latency"] = backend.stats()["latency"]
        stats = _wait(
            lambda: (lambda s: s if s["retrain"]["state"] == "done" and s["trained"] else None)(
                backend.stats()
            ),
            180,
            "the retrain",
            backend.proc,
            backend.log,
        )
        phases["retrain_s"] = stats["retrain"]["seconds"]
        # the retrained network's scores written back (the worker follows the swap)
        _wait(
            lambda: backend.stats()["scores"]["finished"] > stats["retrain"]["finished"],
            60,
            "scores after the retrain",
            backend.proc,
            backend.log,
        )
        yield {
            "api": api,
            "project": project,
            "view": view,
            "backend": backend,
            "store": store,
            "seen": seen,
            "truth_of": truth_of,
            "ls": label_studio,
            "tasks": tasks,
        }
    finally:
        backend.stop()


def test_every_annotation_reached_the_store(loop):
    from ntkal.labelstore import LabelStore
    from ntkal.labelstudio.backend import annotation_of

    tasks = json.loads((Path(str(loop["store"]) + ".tasks.json")).read_text())["task_ids"]
    with LabelStore(str(loop["store"])) as store:
        records = store.records()
    got = [(annotation_of(r["annotator"]), tasks[r["index"]], CLASSES[r["label"]]) for r in records]
    assert got == loop["seen"]["annotations"]


def test_scores_changed_after_each_annotation(loop):
    seen = loop["seen"]
    assert all(score is None for _, score, _ in seen["before"])
    prev = {t: s for t, s, _ in seen["before"]}
    for n, rows in enumerate(seen["after"], start=1):
        now = {t: s for t, s, _ in rows}
        labelled = {t for t, _, k in rows if k}
        assert len(labelled) == n
        assert all(now[t] is None for t in labelled)  # ntkal's predictions are for open tasks
        open_tasks = [t for t in now if t not in labelled]
        assert all(now[t] is not None and 0 <= now[t] <= 1 for t in open_tasks)
        assert any(now[t] != prev[t] for t in open_tasks), f"no score changed after {n}"
        assert rows[0][0] == seen["picks"][n - 1]  # the sorted list starts at ntkal's pick
        prev = now


def test_top_task_is_ntkals_own_sequential_pick(loop):
    """A fresh sequential session on the store's labels and the saved retrained weights picks the
    task the Data Manager shows first."""
    from ntkal.labelstore import LabelStore
    from ntkal.labelstudio.client import LabelStudioClient
    from ntkal.labelstudio.pool import build_pool
    from ntkal.labelstudio.protocol import parse_label_config
    from ntkal.learner import ActiveLearner
    from ntkal.models import build_model
    from ntkal.strategies import get_strategy

    client = LabelStudioClient(loop["ls"]["url"], loop["ls"]["token"])
    ids = json.loads((Path(str(loop["store"]) + ".tasks.json")).read_text())["task_ids"]
    pool = build_pool(
        loop["tasks"],
        parse_label_config(CONFIG),
        fetch=client.file,
        task_ids=ids,
        image_size=(8, 8),
    )
    net = build_model("mlp", pool.dataset.in_shape, 10)
    state = torch.load(str(loop["store"]) + ".weights.pt", weights_only=True)
    net.load_state_dict(state["model_state"])
    with LabelStore(str(loop["store"])) as store:
        idx, lab = store.labelled()
    learner = ActiveLearner(
        net,
        get_strategy("vr"),
        pool.dataset.x_train,
        labelled=idx,
        labels=lab,
        num_classes=10,
        train_config=None,
        mode="sequential",
    )
    pick = ids[int(learner.query(1)[0])]
    rows = _sorted_view(loop["api"], loop["project"], loop["view"])
    assert rows[0][0] == pick
    assert rows[0][1] == 1.0 and rows[1][1] < 1.0


def test_a_retrain_ran(loop):
    stats = loop["backend"].stats()
    assert stats["trained"] and stats["retrain"]["state"] == "done"
    assert stats["retrain"]["labels"] >= WARMUP
    assert Path(str(loop["store"]) + ".weights.pt").is_file()


def test_kill_9_loses_no_acknowledged_annotation(loop):
    """Runs last: kill -9 the backend, annotate while it is down, restart it on the same store."""
    from ntkal.labelstore import LabelStore

    api, backend = loop["api"], loop["backend"]
    backend.kill9()
    rows = _sorted_view(api, loop["project"], loop["view"])
    task = next(t for t, _, k in rows if k == 0)
    ann = _annotate(api, task, loop["truth_of"][task])  # its webhook finds no backend
    backend.start()
    stats = backend.stats()
    assert stats["labelled"] == N_ANNOTATIONS + 1
    with LabelStore(str(loop["store"])) as store:
        assert len(store) == N_ANNOTATIONS + 1
        assert store.records()[-1]["annotator"].endswith(f":{ann['id']}")
    rows = _sorted_view(api, loop["project"], loop["view"])
    assert sum(1 for _, _, k in rows if k) == N_ANNOTATIONS + 1
    assert rows[0][0] == stats["scores"]["pick_task"]


def test_report_latency_and_screenshot(loop):
    lat = np.array(loop["seen"]["latency"])
    inside = loop["seen"]["backend_latency"]
    print(
        f"\nbackend, webhook received -> predictions written: median "
        f"{inside['median_s']:.2f} s, max {inside['max_s']:.2f} s ({inside['count']} events)"
    )
    print(
        f"\nannotation -> scores written back ({lat.size} annotations through Label Studio's "
        f"API): median {np.median(lat):.2f} s, max {lat.max():.2f} s; phases (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in loop["seen"]["phases"].items())
    )
    out = os.environ.get("NTKAL_LS_SCREENSHOT")
    if not out:
        return
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.skip("chromium / chromedriver not installed: no screenshot")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    hidden = [
        f"tasks:{c}"
        for c in (
            "inner_id",
            "completed_at",
            "cancelled_annotations",
            "total_predictions",
            "annotators",
            "annotations_results",
            "annotations_ids",
            "predictions_model_versions",
            "file_upload",
            "storage_filename",
            "created_at",
            "updated_at",
            "updated_by",
            "avg_lead_time",
            "draft_exists",
            "comment_count",
            "unresolved_comment_count",
            "comment_authors",
        )
    ]
    loop["api"](
        "PATCH",
        f"/api/dm/views/{loop['view']}",
        {
            "project": loop["project"],
            "data": {
                "title": "ntkal: next pick first",
                "ordering": ["-tasks:predictions_score"],
                "hiddenColumns": {"explore": hidden, "labeling": hidden},
            },
        },
    )
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        url = loop["ls"]["url"]
        driver.get(url + "/user/login/")
        driver.find_element(By.NAME, "email").send_keys(USER)
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        time.sleep(3)
        driver.get(f"{url}/projects/{loop['project']}/data?tab={loop['view']}")
        time.sleep(8)
        driver.save_screenshot(out)
    finally:
        driver.quit()
