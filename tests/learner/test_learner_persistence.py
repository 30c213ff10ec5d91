"""Saved learner files that cannot be used give errors naming the file and the fix."""

from __future__ import annotations

import pickle

import pytest
import torch
from learner_doubles import Cfg, MaxEntropy, Net, make_learner

from ntkal.learner import ActiveLearner
from ntkal.learner.persistence import REQUIRED_KEYS


def _saved(tmp_path, **kw):
    path = tmp_path / "al.pt"
    make_learner(**kw).save(path)
    return path


def _load(path, **kw):
    args = dict(model=Net(), strategy=MaxEntropy(), train_config=Cfg())
    args.update(kw)
    return ActiveLearner.load(path, **args)


def test_a_model_of_another_architecture_names_the_first_mismatch(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(ValueError) as info:
        _load(path, model=Net(h=32))
    msg = str(info.value)
    assert "the model does not match the one saved in" in msg and str(path) in msg
    assert "'body.0.weight' has shape (16, 2) in the file but (32, 2) in the model" in msg
    with pytest.raises(ValueError, match=r"'extra.weight' .*which the file lacks"):
        wider = Net()
        wider.extra = torch.nn.Linear(1, 1)
        _load(path, model=wider)


def test_missing_keys_are_named(tmp_path):
    path = _saved(tmp_path)
    state = torch.load(path, weights_only=True)
    for key in ("pool", "model_state", "num_classes"):
        broken = {k: v for k, v in state.items() if k != key}
        torch.save(broken, path)
        with pytest.raises(ValueError, match=f"incomplete ActiveLearner file: it lacks '{key}'"):
            _load(path)
    assert "pool" in REQUIRED_KEYS


def test_an_invalid_pool_state_names_the_file(tmp_path):
    path = _saved(tmp_path)
    state = torch.load(path, weights_only=True)
    state["pool"] = {"size": 120, "labelled": [0, 0]}
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"al\.pt holds an invalid pool state \(index 0 appears"):
        _load(path)


def test_truncated_empty_and_corrupt_files(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"al\.pt is truncated or corrupt") as info:
        _load(path)
    assert not str(info.value).rstrip().endswith(":")
    path.write_bytes(data[:-5])  # only the end cut off: torch fails with an empty errno text
    with pytest.raises(ValueError, match=r"al\.pt is truncated or corrupt"):
        _load(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"al\.pt is empty \(0 bytes\)"):
        _load(path)
    path.write_bytes(pickle.dumps({"format": "ntkal.ActiveLearner"}) * 3 + b"\x80garbage")
    with pytest.raises(ValueError) as info:
        _load(path)
    msg = str(info.value)
    assert str(path) in msg and "weights_only" not in msg and "save the learner again" in msg


def test_a_file_holding_arbitrary_objects_is_refused_without_torch_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "ntkal.ActiveLearner", "payload": Cfg()}, path)
    with pytest.raises(ValueError) as info:
        _load(path)
    msg = str(info.value)
    assert "not an ActiveLearner file ntkal can read safely" in msg
    assert "weights_only" not in msg and "arbitrary code" not in msg


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved learner at"):
        _load(tmp_path / "nothing.pt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        _load(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_a_file_saved_on_cuda_says_to_pass_a_device(tmp_path):
    path = _saved(tmp_path)
    state = torch.load(path, weights_only=True)
    state["device"] = "cuda:0"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"saved on device 'cuda:0'.*pass device='cpu'"):
        _load(path)
    assert _load(path, device="cpu").device.type == "cpu"
