"""Atomic writes leave no temporary behind: not on an exception, not after a killed writer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ntkal.atomic_files import (
    STALE_AFTER_SECONDS,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    remove_stale_temporaries,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failure_mid_write_removes_the_temporary_and_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "state.pt"
    atomic_write_text(target, "old")

    def write(fh):
        fh.write(b"x" * 100_000)  # part of the new content is on disk when it fails
        fh.flush()
        assert len(_temporaries(tmp_path)) == 1
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, write, binary=True)
    assert _temporaries(tmp_path) == []
    assert target.read_text() == "old"


def test_round_trip_and_permissions_of_a_plain_open(tmp_path):
    target = tmp_path / "sub" / "state.pt"
    atomic_torch_save({"w": torch.arange(3)}, target)
    assert torch.load(target, weights_only=True)["w"].tolist() == [0, 1, 2]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert _temporaries(target.parent) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_and_old_ones_are_removed(tmp_path):
    target = tmp_path / "results.json"
    dead = tmp_path / f".results.json.{_dead_pid()}-abc123.tmp"
    live_parent = tmp_path / f".results.json.{os.getppid()}-def456.tmp"  # a running process
    own = tmp_path / f".results.json.{os.getpid()}-0a0b0c.tmp"  # this process: maybe in use
    legacy_old = tmp_path / ".results.json.k2j_x9qa.tmp"  # older name without a pid
    legacy_new = tmp_path / ".results.json.p0q1r2s3.tmp"
    other_target = tmp_path / f".other.json.{_dead_pid()}-abc123.tmp"
    for p in (dead, live_parent, own, legacy_old, legacy_new, other_target):
        p.write_bytes(b"partial")
    old = time.time() - STALE_AFTER_SECONDS - 60
    os.utime(legacy_old, (old, old))
    atomic_write_text(target, "{}")
    left = {p.name for p in _temporaries(tmp_path)}
    assert left == {live_parent.name, own.name, legacy_new.name, other_target.name}
    os.utime(live_parent, (old, old))
    assert remove_stale_temporaries(target) == [live_parent]


def test_a_writer_killed_mid_write_is_cleaned_up_by_the_next_write(tmp_path):
    target = tmp_path / "big.pt"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {SRC!r})
        from ntkal.atomic_files import atomic_write
        def write(fh):
            fh.write(b"y" * 1_000_000)
            fh.flush()
            os._exit(9)  # killed: no exception handler runs
        atomic_write({str(target)!r}, write, binary=True)
    """)
    subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert len(_temporaries(tmp_path)) == 1 and not target.exists()
    atomic_torch_save({"ok": 1}, target)
    assert _temporaries(tmp_path) == []
    assert torch.load(target, weights_only=True) == {"ok": 1}
