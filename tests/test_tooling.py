"""Maintenance gates: ruff (lint and format) and mypy on the sources, and the API reference build.

Each tool runs as a subprocess with the configuration in ``pyproject.toml`` / ``mkdocs.yml`` and
the test fails with the tool's own report. A tool that is not installed skips its test with the
command that installs it (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Gates whose findings in the current tree are known and not yet fixed. The fixes are one
#: mechanical pass over ``src`` and ``tests`` (``make lint-fix``, then the few hand fixes that
#: ``make lint`` still lists). Each listed gate is expected to fail (strict xfail): once it passes,
#: the test fails until its name is removed here, so the gate cannot be left switched off.
KNOWN_FINDINGS: frozenset[str] = frozenset()

INSTALL_HINT = "pip install -e '.[test]'"


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed ({INSTALL_HINT})")


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _report(proc: subprocess.CompletedProcess) -> str:
    return f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}".strip()


def _gate(name: str):
    """Mark a repository gate as a known failure while it is listed in ``KNOWN_FINDINGS``."""
    if name in KNOWN_FINDINGS:
        return pytest.mark.xfail(
            strict=True,
            reason=f"{name}: known findings, to be fixed in one pass (make lint-fix, "
            "then the hand fixes make lint lists)",
        )
    return lambda f: f


# ----------------------------------------------------------------------------- the repository


@_gate("ruff check")
def test_ruff_check_is_clean():
    _need("ruff")
    proc = _run(["ruff", "check", "--no-cache", "src", "tests"], ROOT)
    assert proc.returncode == 0, _report(proc)


@_gate("ruff format")
def test_ruff_format_is_clean():
    _need("ruff")
    proc = _run(["ruff", "format", "--no-cache", "--check", "src", "tests"], ROOT)
    assert proc.returncode == 0, _report(proc)


@_gate("mypy")
def test_mypy_is_clean():
    _need("mypy")
    proc = _run(["mypy", "src"], ROOT, timeout=600)
    assert proc.returncode == 0, _report(proc)


def test_api_reference_builds_with_warnings_as_errors(tmp_path):
    _need("mkdocs")
    _need("mkdocstrings_handlers.python")
    proc = _run(["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], ROOT)
    assert proc.returncode == 0, _report(proc)
    # The reference pages were rendered from the docstrings, not left empty.
    page = (tmp_path / "site" / "api" / "lookahead" / "index.html").read_text(encoding="utf-8")
    assert 'id="ntkal.lookahead.Lookahead"' in page
    # Sphinx roles in the docstrings read as code spans (docs/hooks/sphinx_roles.py), not ":func:".
    assert ":func:" not in page and ":class:" not in page and "<code>" in page
    # The README's links into the pages land on a heading that exists.
    for target, anchor in _readme_links():
        if anchor and target.startswith("docs/") and target.endswith(".md"):
            built = tmp_path / "site" / target[len("docs/") : -len(".md")] / "index.html"
            assert f'id="{anchor}"' in built.read_text(encoding="utf-8"), (
                f"README: {target}#{anchor}"
            )


def _readme_links() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [tuple(link.partition("#")[::2]) for link in links if "://" not in link]


def test_readme_links_point_at_files_that_exist():
    links = _readme_links()
    assert len(links) >= 5  # the figures and the docs pages
    missing = [target for target, _ in links if target and not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"


# ----------------------------------------------------------------------------- the gates themselves
# A small project under the repository's own configuration: each gate passes on clean code and
# fails on a planted finding, so a gate that ignores the configuration or the exit status is caught.

CLEAN = '''"""A clean module."""

from __future__ import annotations


def scale(values: list[float], factor: float) -> list[float]:
    """Multiply every value; a line of 95 columns stays as it is under the 100-column limit."""
    return [value * factor for value in values if value is not None and factor is not None]
'''


def _project(tmp_path: Path, module: str) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "src" / "pkg" / "__init__.py").write_text(module, encoding="utf-8")
    return tmp_path


def test_clean_module_passes_every_gate(tmp_path):
    _need("ruff")
    _need("mypy")
    assert max(len(line) for line in CLEAN.splitlines()) > 88  # only the 100-column limit keeps it
    project = _project(tmp_path, CLEAN)
    for args in (
        ["ruff", "check", "--no-cache", "src", "tests"],
        ["ruff", "format", "--no-cache", "--check", "src", "tests"],
        ["mypy", "--cache-dir", str(tmp_path / ".mypy_cache"), "src"],
    ):
        proc = _run(args, project)
        assert proc.returncode == 0, f"{' '.join(args)}: {_report(proc)}"


@pytest.mark.parametrize(
    "planted, code",
    [
        ("import os\n", "F401"),  # unused import
        (
            "from typing import Optional\n\nX: Optional[int] = None\n",
            "UP045",
        ),  # pre-3.10 annotation
        ("def f(x=[]):\n    return x\n", "B006"),  # mutable default
        ("try:\n    pass\nexcept Exception:\n    pass\n", "BLE001"),  # blind except
    ],
)
def test_ruff_check_fails_on_a_planted_finding(tmp_path, planted, code):
    _need("ruff")
    project = _project(tmp_path, CLEAN + "\n\n" + planted)
    proc = _run(["ruff", "check", "--no-cache", "src", "tests"], project)
    assert proc.returncode != 0 and code in proc.stdout, _report(proc)


def test_ruff_format_fails_on_unformatted_code(tmp_path):
    _need("ruff")
    project = _project(tmp_path, CLEAN + "\n\nX = {'a':1}\n")
    proc = _run(["ruff", "format", "--no-cache", "--check", "src", "tests"], project)
    assert proc.returncode != 0 and "pkg/__init__.py" in proc.stdout, _report(proc)


@pytest.mark.parametrize(
    "planted",
    [
        "TOTAL: int = scale([1.0], 2.0)\n",
        # inside an unannotated function: reported only under check_untyped_defs = true
        "def untyped():\n    total: int = scale([1.0], 2.0)\n    return total\n",
    ],
)
def test_mypy_fails_on_a_planted_type_error(tmp_path, planted):
    _need("mypy")
    project = _project(tmp_path, CLEAN + "\n\n" + planted)
    proc = _run(["mypy", "--cache-dir", str(tmp_path / ".mypy_cache"), "src"], project)
    assert proc.returncode != 0 and "[assignment]" in proc.stdout, _report(proc)
