"""The benchmarks are scripts, not a package: load their shared module from its file."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def common():
    if "_common" in sys.modules:
        return sys.modules["_common"]
    spec = importlib.util.spec_from_file_location("_common", BENCHMARKS / "_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_common"] = module
    spec.loader.exec_module(module)
    return module
