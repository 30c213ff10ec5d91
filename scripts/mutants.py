"""Mutation testing of the core modules with mutmut, each group against its own tests.

Each group below is a set of source files and the test files that are meant to pin them down.
A group runs in its own scratch copy of the repository (``build/mutants/<group>/``: ``src/``,
``tests/`` and a ``pyproject.toml`` whose ``[tool.mutmut]`` section names the group's files and
tests), so groups never share mutmut state and the repository itself is never modified. mutmut
maps every test to the functions it executes and runs, for each mutant, only the selected tests
that reach the mutated function; ``process_isolation = "forkserver"`` keeps torch out of the
forking parent.

Usage (from the repository root; ``make mutants`` runs the defaults)::

    python scripts/mutants.py                       # every group, 40 min cap each
    python scripts/mutants.py --groups strategies --time-cap 900
    python scripts/mutants.py --list                # the groups and their files

After adding tests, the survivors alone can be re-checked in a group's scratch copy (copy the
changed test files into ``build/mutants/<group>/tests/``, run ``python -m mutmut run NAME ...``
there without ``PYTHONPATH``) and the report refreshed with ``--collect-only``.

Results: ``benchmarks/results/mutants.json`` (per group: counts by status, every survivor with
its diff) and ``benchmarks/results/mutants.txt`` (the survivors' diffs, for reading). Groups not
run this time keep their earlier entries. A group stopped by ``--time-cap`` reports the mutants
it reached and counts the rest as "not checked". Needs ``pip install -e '.[mutation]'``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "build" / "mutants"

#: group -> (source files to mutate, test files that select the tests run against them).
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "strategies": (
        ["src/ntkal/strategies/badge.py", "src/ntkal/strategies/bald.py",
         "src/ntkal/strategies/base.py", "src/ntkal/strategies/coreset.py",
         "src/ntkal/strategies/forward_passes.py", "src/ntkal/strategies/learning_loss.py",
         "src/ntkal/strategies/random_sampling.py", "src/ntkal/strategies/registry.py",
         "src/ntkal/strategies/uncertainty.py", "src/ntkal/strategies/typicality.py"],
        ["tests/strategies/test_baselines.py", "tests/strategies/test_contract.py",
         "tests/strategies/test_typicality.py"],
    ),
    "strategies_lookahead": (
        ["src/ntkal/strategies/lookahead.py", "src/ntkal/strategies/expected_error.py",
         "src/ntkal/strategies/output_change.py", "src/ntkal/strategies/variance_reduction.py"],
        ["tests/strategies/test_lookahead_strategies.py", "tests/strategies/test_sgd_lookahead.py",
         "tests/strategies/test_lookahead_family.py", "tests/strategies/test_contract.py"],
    ),
    "lookahead": (
        ["src/ntkal/lookahead/block.py", "src/ntkal/lookahead/dense.py",
         "src/ntkal/lookahead/engine.py", "src/ntkal/lookahead/streaming.py"],
        ["tests/test_lookahead.py", "tests/test_lookahead_streaming.py",
         "tests/test_lookahead_vs_gradient_descent.py"],
    ),
    "kernels": (
        ["src/ntkal/kernels/__init__.py", "src/ntkal/kernels/_common.py",
         "src/ntkal/kernels/blocking.py", "src/ntkal/kernels/jacobian.py"],
        ["tests/kernels"],
    ),
    "kernels_structured": (
        ["src/ntkal/kernels/structured.py"],
        ["tests/kernels"],
    ),
}

PYTEST_SECTION = """[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-m 'not slow and not gpu' -p no:cacheprovider"
markers = ["slow: long-running tests", "gpu: needs a CUDA device"]
filterwarnings = ["ignore::DeprecationWarning:torch.*"]
"""


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(group: str) -> Path:
    """A fresh scratch copy for ``group`` with its mutmut configuration."""
    sources, tests = GROUPS[group]
    missing = [p for p in sources if not (REPO / p).exists()]
    if missing:
        raise SystemExit(f"group {group}: missing source file(s) {', '.join(missing)}; "
                         "update GROUPS in scripts/mutants.py")
    absent = [p for p in tests if not (REPO / p).exists()]
    tests = [p for p in tests if p not in absent]
    if absent:
        print(f"    warning: group {group}: test path(s) {', '.join(absent)} not found, skipped",
              flush=True)
    if not tests:
        raise SystemExit(f"group {group}: none of its test paths exist; update GROUPS")
    work = WORK / group
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", work / "src", ignore=ignore)
    shutil.copytree(REPO / "tests", work / "tests", ignore=ignore)
    if (REPO / "data").exists():  # datasets some tests read (a symlink in a checkout)
        os.symlink((REPO / "data").resolve(), work / "data")
    (work / "pyproject.toml").write_text(PYTEST_SECTION + f"""
[tool.mutmut]
source_paths = ["src"]
only_mutate = {_toml_list(sources)}
pytest_add_cli_args_test_selection = {_toml_list(tests)}
process_isolation = "forkserver"
use_git_change_detection = false
""")
    return work


def run_group(group: str, time_cap: float, max_children: int) -> dict:
    work = prepare(group)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut sets sys.path
    env.update(NTKAL_QUIET="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = (work / "mutmut.log").open("w")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children",
                             str(max_children)], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    capped = False
    try:
        proc.wait(timeout=time_cap)
    except subprocess.TimeoutExpired:
        capped = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()
    seconds = time.perf_counter() - start
    return collect(group, work, seconds, capped, proc.returncode)


def collect(group: str, work: Path, seconds: float, capped: bool, returncode) -> dict:
    """Statuses from mutmut's per-file ``.meta`` records; diffs of the survivors."""
    from mutmut.stats import status_by_exit_code

    counts: dict[str, int] = {}
    survivors = []
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in sorted(data.get("exit_code_by_key", {}).items()):
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
            if status in ("survived", "no tests", "suspicious"):
                survivors.append({"mutant": name, "status": status})
    for s in survivors:
        shown = subprocess.run([sys.executable, "-m", "mutmut", "show", s["mutant"]], cwd=work,
                               capture_output=True, text=True, timeout=120)
        s["diff"] = [ln for ln in shown.stdout.splitlines()
                     if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]
    log_tail = (work / "mutmut.log").read_text(errors="replace")[-2000:]
    return {"files": GROUPS[group][0], "tests": GROUPS[group][1], "seconds": round(seconds, 1),
            "stopped_by_time_cap": capped, "mutmut_returncode": returncode, "counts": counts,
            "survivors": survivors, "log_tail": log_tail if returncode not in (0, None) else ""}


def write_reports(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutants.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    lines = ["Mutation-testing survivors (scripts/mutants.py; explanations in mutants.md)", ""]
    for group, res in report["groups"].items():
        c = res["counts"]
        lines.append(f"== {group}: {sum(c.values())} mutants, {c.get('killed', 0)} killed, "
                     f"{c.get('survived', 0)} survived, {c.get('no tests', 0)} without tests, "
                     f"{c.get('timeout', 0)} timeouts, {c.get('not checked', 0)} not checked"
                     f"{' (stopped by the time cap)' if res['stopped_by_time_cap'] else ''}; "
                     f"{res['seconds']:.0f} s")
        for s in res["survivors"]:
            lines.append(f"  {s['mutant']} [{s['status']}]")
            lines.extend(f"      {d}" for d in s.get("diff", []))
        lines.append("")
    (RESULTS / "mutants.txt").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help=f"comma-separated subset of {', '.join(GROUPS)}")
    parser.add_argument("--time-cap", type=float, default=2400.0,
                        help="seconds per group before it is stopped (default 2400)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--list", action="store_true", help="print the groups and exit")
    parser.add_argument("--collect-only", action="store_true",
                        help="re-read the results already in build/mutants/<group> (e.g. after "
                             "`mutmut run NAMES` there re-checked some mutants) without running")
    args = parser.parse_args()
    if args.list:
        for group, (sources, tests) in GROUPS.items():
            print(f"{group}: {' '.join(sources)}\n    tests: {' '.join(tests)}")
        return
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown group(s) {', '.join(unknown)}; valid: {', '.join(GROUPS)}")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        raise SystemExit("mutmut is not installed: pip install -e '.[mutation]'") from None
    path = RESULTS / "mutants.json"
    report = json.loads(path.read_text()) if path.exists() else {"groups": {}}
    for group in groups:
        if args.collect_only:
            work = WORK / group
            if not (work / "mutants").is_dir():
                print(f"==> {group}: no results in {work}, skipped", flush=True)
                continue
            old = report["groups"].get(group, {})
            print(f"==> {group}: collecting {work}", flush=True)
            report["groups"][group] = collect(group, work, old.get("seconds", 0.0),
                                              old.get("stopped_by_time_cap", False), 0)
        else:
            print(f"==> {group} (cap {args.time_cap:.0f} s)", flush=True)
            report["groups"][group] = run_group(group, args.time_cap, args.max_children)
        import mutmut as m

        report["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                             "python": sys.version.split()[0], "mutmut": m.__version__}
        write_reports(report)  # after every group, so an interrupted run keeps what it did
        c = report["groups"][group]["counts"]
        print(f"    {c}", flush=True)
    print(f"wrote {RESULTS / 'mutants.json'} and {RESULTS / 'mutants.txt'}")


if __name__ == "__main__":
    main()
