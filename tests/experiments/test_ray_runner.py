"""Ray runner: the same records as the local runner, resuming across runners, loopback only.

One private Ray (2 CPUs, 127.0.0.1) is started for the module and stopped at its end.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml

import ntkal.experiments.runner as runner_module
import ntkal.training
from ntkal.experiments.config import ConfigError, Resources, parse_config
from ntkal.experiments.runner import run_experiment

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="ray is not installed (pip install 'ntkal[ray]')"
)

TIMING = ("query_seconds", "train_seconds")


def _raw(**changes):
    raw = {
        "name": "tiny",
        "dataset": {"name": "synthetic", "train_size": 120, "test_size": 40},
        "model": {"name": "mlp", "width": 16},
        "trainer": {"epochs": 3, "batch_size": 16, "lr": 0.05},
        "strategies": ["random", {"name": "mlmoc", "params": {"kernel": "pseudo"}}],
        "initial_size": 8,
        "budget": 4,
        "cycles": 2,
        "subset": 40,
        "seeds": [0, 1],
        "threads": 1,
    }
    raw.update(changes)
    return raw


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


# ----------------------------------------------------------------------------- listening sockets
def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _hex_ip(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]  # four little-endian 32-bit words
    full = b"".join(words)
    if full[:12] == b"\0" * 10 + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in full[12:])
    return ":".join(full[i : i + 2].hex() for i in range(0, 16, 2))


def listening_addresses(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state held by ``pids`` (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ip, port = cols[1].split(":")
                found.append((inodes[cols[9]], _hex_ip(ip), int(port, 16)))
    return found


def test_hex_ip_decoding():
    assert _hex_ip("0100007F") == "127.0.0.1"
    assert _hex_ip("00000000") == "0.0.0.0"
    assert _hex_ip("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"
    assert _hex_ip("00000000000000000000000001000000") == "0000:0000:0000:0000:0000:0000:0000:0001"


# ----------------------------------------------------------------------------- config
def test_resources_are_validated_and_left_out_of_the_hashes():
    cfg = parse_config(_raw())
    assert cfg.resources == Resources(cpus=1.0, gpus=0.0)
    more = parse_config(
        _raw(
            resources={"cpus": 2, "gpus": 0.5},
            strategies=[
                "random",
                {"name": "mlmoc", "params": {"kernel": "pseudo"}, "resources": {"cpus": 0.5}},
            ],
        )
    )
    assert more.resources_for(more.strategies[0]) == Resources(2.0, 0.5)
    assert more.resources_for(more.strategies[1]) == Resources(0.5, 0.0)
    # scheduling only: earlier results still resume
    assert more.shared_hash() == cfg.shared_hash()
    assert more.strategy_hash(more.strategies[1]) == cfg.strategy_hash(cfg.strategies[1])
    assert parse_config(more.to_dict()) == more
    for bad, message in [
        ({"cpu": 1}, r"unknown key\(s\) cpu in resources; valid keys: cpus, gpus"),
        ({"cpus": 0}, r"resources.cpus must be > 0"),
        ({"gpus": -1}, r"resources.gpus must lie in"),
        ({"cpus": "two"}, r"resources.cpus must be a finite number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(_raw(resources=bad))
    with pytest.raises(ConfigError, match=r"strategies\[0\].resources.cpus must be > 0"):
        parse_config(_raw(strategies=[{"name": "random", "resources": {"cpus": 0}}]))


@needs_ray
def test_cuda_without_gpu_share_is_refused(tmp_path):
    from ntkal.experiments.ray_runner import run_experiment_ray

    cfg = parse_config(_raw(device="cuda", strategies=["random"]))
    with pytest.raises(ConfigError, match=r"needs resources.gpus > 0 \(strategy 'random'"):
        run_experiment_ray(cfg, tmp_path, quiet=True)


# ----------------------------------------------------------------------------- on a private Ray
@pytest.fixture(scope="module")
def local_ray():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'ntkal[ray]')")
    from ntkal.experiments.ray_runner import ray_cluster

    # Started without the test's PYTHONPATH: the workers must still import this ntkal (the one
    # the driver runs, which need not be the installed one).
    saved = os.environ.pop("PYTHONPATH", None)
    try:
        with ray_cluster(num_cpus=2) as ray:
            if saved is not None:
                os.environ["PYTHONPATH"] = saved
            yield ray
    finally:
        if saved is not None:
            os.environ["PYTHONPATH"] = saved
    assert not ray.is_initialized()


def _ntkal_file():
    import ntkal

    return ntkal.__file__


@needs_ray
def test_workers_import_the_drivers_ntkal(local_ray):
    import sys

    import ray.cloudpickle

    import ntkal

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack the tests
    assert local_ray.get(local_ray.remote(_ntkal_file).remote()) == ntkal.__file__


def _refuse(*args, **kwargs):
    raise AssertionError("a run executed in the driver process")


def _refuse_local_runs(mp):
    """Fail if this (driver) process runs a (strategy, seed) run itself: Ray workers must (they
    are other processes, untouched by the patch)."""
    import ntkal.experiments.ray_runner as ray_runner

    mp.setattr(runner_module, "run_strategy_seed", _refuse)
    mp.setattr(ray_runner, "run_strategy_seed", _refuse)


@needs_ray
def test_ray_listens_on_loopback_only(local_ray):
    sockets = listening_addresses(_descendants(os.getpid()) | {os.getpid()})
    assert len(sockets) >= 3, sockets  # GCS, raylet, driver's core worker at least
    outward = [s for s in sockets if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert not outward, f"Ray listens beyond loopback: {outward}"


@needs_ray
def test_records_are_the_local_runners(local_ray, tmp_path):
    cfg = parse_config(_raw())
    local = run_experiment(cfg, tmp_path / "local", quiet=True, plot=False)
    from ntkal.experiments.ray_runner import run_experiment_ray

    with pytest.MonkeyPatch.context() as mp:
        _refuse_local_runs(mp)
        remote = run_experiment_ray(cfg, tmp_path / "ray", quiet=True, plot=True)
        again = run_experiment_ray(cfg, tmp_path / "ray", quiet=True, plot=False)
    assert len(remote) == 12
    assert _without_timing(remote) == _without_timing(local)  # same records, same order
    doc_l = json.loads((tmp_path / "local" / "results.json").read_text())
    doc_r = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert {k: v for k, v in doc_r.items() if k != "records"} == {
        k: v for k, v in doc_l.items() if k != "records"
    }
    assert _without_timing(doc_r["records"]) == _without_timing(doc_l["records"])
    assert all(r["train_seconds"] > 0 for r in remote)
    assert (tmp_path / "ray" / "learning_curves.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "ray" / "state").iterdir()) == sorted(
        p.name for p in (tmp_path / "local" / "state").iterdir()
    )
    assert again == remote  # finished: the second invocation changed nothing


class _CrashAfter:
    def __init__(self, n):
        self.n, self.calls, self.inner = n, 0, ntkal.training.train

    def __call__(self, *args, **kwargs):
        if self.calls >= self.n:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.inner(*args, **kwargs)


@needs_ray
def test_ray_resumes_a_local_run_from_its_saved_state(local_ray, tmp_path, monkeypatch):
    from ntkal.experiments.ray_runner import run_experiment_ray

    cfg = parse_config(_raw(strategies=["mlmoc"], seeds=[3]))
    reference = run_experiment(cfg, tmp_path / "full", quiet=True, plot=False)
    out = tmp_path / "cut"
    monkeypatch.setattr(ntkal.training, "train", _CrashAfter(2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(cfg, out, quiet=True, plot=False)
    monkeypatch.undo()
    partial = json.loads((out / "results.json").read_text())["records"]
    assert [r["cycle"] for r in partial] == [0, 1]
    records = run_experiment_ray(cfg, out, quiet=True, plot=False)
    assert _without_timing(records) == _without_timing(reference)
    # the two cycles finished locally were continued from the saved learner, not redone
    assert records[:2] == partial


@needs_ray
def test_cli_ray_flag_uses_the_ray_runner(local_ray, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ntkal.cli import app

    _refuse_local_runs(monkeypatch)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(_raw(strategies=["random"], seeds=[0], cycles=1)))
    result = CliRunner().invoke(
        app, ["run", str(path), "--out", str(tmp_path / "o"), "-q", "--ray"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "o" / "results.json").read_text())["records"]
    assert [(r["strategy"], r["cycle"]) for r in records] == [("random", 0), ("random", 1)]


@needs_ray
def test_task_errors_name_the_run(local_ray, tmp_path):
    from ntkal.experiments.ray_runner import run_experiment_ray

    # a trainer the driver does not look at, rejected inside the task
    cfg = parse_config(_raw(strategies=["random"], seeds=[0], cycles=1))
    import dataclasses

    bad = dataclasses.replace(cfg, trainer={**cfg.trainer, "epochs": 0})
    with pytest.raises(
        ConfigError,
        match=r"run 'random' seed 0 failed on a Ray worker: "
        r"trainer: .*epochs",
    ):
        run_experiment_ray(bad, tmp_path, quiet=True, plot=False)


def test_cli_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    from typer.testing import CliRunner

    from ntkal.cli import app

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(_raw(strategies=["random"], seeds=[0], cycles=1)))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), "--ray"])
    assert result.exit_code == 2
    assert "needs the `ray` package: pip install 'ntkal[ray]'" in result.output
    assert not (tmp_path / "o" / "results.json").exists()


def _npz(path, seed=0, n=60, d=5, k=3):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, d)) + 2.0 * np.eye(k, d)[y]
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))
    return path


def _file_raw(path, **changes):
    raw = _raw(
        dataset={"path": str(path)},
        strategies=["random"],
        seeds=[0],
        initial_size=6,
        budget=3,
        cycles=2,
        subset=None,
    )
    raw.update(changes)
    return raw


@needs_ray
def test_ray_loads_a_users_file_as_the_local_runner_does(local_ray, tmp_path, monkeypatch):
    """``dataset: {path: ...}`` (a relative path, read from the driver's working directory):
    the Ray driver once failed with "unknown dataset" here, loading by name."""
    from ntkal.experiments.ray_runner import run_experiment_ray

    _npz(tmp_path / "mydata.npz")
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(_file_raw("mydata.npz"))
    local = run_experiment(cfg, tmp_path / "local", quiet=True, plot=False)
    with pytest.MonkeyPatch.context() as mp:
        _refuse_local_runs(mp)
        remote = run_experiment_ray(cfg, tmp_path / "ray", quiet=True, plot=False)
    assert len(remote) == 3
    assert _without_timing(remote) == _without_timing(local)


@needs_ray
def test_ray_applies_the_local_runners_data_checks(local_ray, tmp_path):
    import numpy as np

    from ntkal.experiments.ray_runner import run_experiment_ray

    path = tmp_path / "partly.npz"
    y = np.arange(60) % 3
    y[:5] = -1  # unlabelled pool points: `ntkal run` has no oracle for them
    np.savez(path, x=np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32), y=y)
    cfg = parse_config(_file_raw(path))
    for runner in (run_experiment, run_experiment_ray):
        with pytest.raises(ConfigError, match=r"has 5 unlabelled training points"):
            runner(cfg, tmp_path / runner.__name__, quiet=True, plot=False)
