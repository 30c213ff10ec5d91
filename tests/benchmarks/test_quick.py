"""Every benchmark's ``--quick`` runs, in a subprocess, into a temporary folder, so that none of
them can rot unnoticed (``benchmarks/kernels.py`` once failed to import for months).

Most of a quick run is starting Python and importing torch (and torch.optim's compiler stack), so
the scripts run in two subprocesses side by side, each running its share one after another as
``__main__`` (``runpy``, as ``python benchmarks/<script> --quick`` would, the benchmarks folder
first on the path), a failure in one reported without stopping the others. Results go to
``tmp_path`` (``--results`` / ``--out``), never to benchmarks/results.
"""

import functools
import json
import operator
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"

#: script -> extra arguments of its smoke run. ray_sweep's quick run also starts a private Ray
#: (tens of seconds); the default suite runs its local mode, ``test_ray_sweep_quick`` the rest.
QUICK = {
    "fidelity.py": [],
    "kernels.py": [],
    "lookahead_speed.py": [],
    "lookahead_ray.py": [],
    "pool_scale.py": ["--score-precision", "both"],
    "precision.py": [],
    "ray_sweep.py": ["--modes", "local"],
    "strategies_speed.py": [],
    "label_latency.py": ["--out", "{tmp}/label_latency_quick.json"],
}
#: Benchmarks without a quick mode: the suite runner (`run` / `report` over configs/suite/).
NO_QUICK = {"al_suite.py"}


#: The two subprocesses' shares, about equal in CPU time.
GROUPS = (
    ["label_latency.py", "fidelity.py", "precision.py", "strategies_speed.py", "lookahead_ray.py"],
    ["pool_scale.py", "lookahead_speed.py", "kernels.py", "ray_sweep.py"],
)

RUNNER = """
import json, runpy, sys, traceback
import torch
bench, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, bench)
threads = torch.get_num_threads()
for script, argv in jobs:
    sys.argv = [script, *argv]
    status = {"script": script, "ok": True}
    try:
        runpy.run_path(bench + "/" + script, run_name="__main__")
    except SystemExit as stop:
        status["ok"] = stop.code in (None, 0)
        status["error"] = f"exit {stop.code}"
    except BaseException:
        status.update(ok=False, error=traceback.format_exc())
    torch.set_num_threads(threads)
    print("QUICK-STATUS " + json.dumps(status), flush=True)
"""


def _env() -> dict:
    env = dict(os.environ, NTKAL_QUIET="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


def _argv(script: str, out: Path, extra=None) -> list:
    extra = QUICK[script] if extra is None else extra
    argv = ["--quick", *[a.format(tmp=out) for a in extra]]
    if not any(a.startswith("--out") for a in argv):
        argv += ["--results", str(out)]
    return argv


def _run_group(scripts: list, tmp: Path) -> dict:
    """Run ``scripts`` in one subprocess; ``{script: (ok, error)}`` and the combined output."""
    jobs = []
    for script in scripts:
        out = tmp / script.removesuffix(".py")
        out.mkdir()
        jobs.append([script, _argv(script, out)])
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(BENCHMARKS), json.dumps(jobs)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    status = {}
    for line in proc.stdout.splitlines():
        if line.startswith("QUICK-STATUS "):
            row = json.loads(line.removeprefix("QUICK-STATUS "))
            status[row["script"]] = (row["ok"], row.get("error", ""))
    for script in scripts:  # a crash of the interpreter itself reports what was left
        status.setdefault(
            script, (False, f"not run (exit {proc.returncode}): {proc.stderr[-2000:]}")
        )
    return status


def test_every_benchmark_has_a_quick_run():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(QUICK) | NO_QUICK


def test_every_quick_run_works(tmp_path):
    assert sorted(functools.reduce(operator.iadd, GROUPS, [])) == sorted(QUICK)
    with ThreadPoolExecutor(max_workers=len(GROUPS)) as pool:
        status = {}
        for part in pool.map(lambda g: _run_group(g, tmp_path), GROUPS):
            status.update(part)
    failed = {s: err for s, (ok, err) in status.items() if not ok}
    assert not failed, "\n\n".join(f"== {s}\n{err}" for s, err in failed.items())
    for script in QUICK:
        written = list((tmp_path / script.removesuffix(".py")).glob("*.json"))
        assert written, f"{script} --quick wrote no result JSON"
        result = json.loads(written[0].read_text())
        assert "machine" in result
        if script != "label_latency.py":  # not (yet) on the shared protocol
            assert result["readme_grade"] is False  # a smoke run is never a README figure
            assert "commit" in result["machine"]["git"]
            assert "loadavg_end" in result
    assert not list(tmp_path.glob("*/*_loaded.json"))  # quick runs are written where asked


@pytest.mark.slow
def test_ray_sweep_quick(tmp_path):
    out = tmp_path / "ray_sweep"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ray_sweep.py"), *_argv("ray_sweep.py", out, extra=[])],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(out.glob("*.json")).read_text())
    assert [r["mode"] for r in result["summary"]] == ["local", "ray1"]
    assert all(r["same_records"] for r in result["summary"])
