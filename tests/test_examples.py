"""The README's ask/tell example runs as printed (so the documentation cannot silently rot)."""

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_ask_tell_example_runs_and_saves_its_state(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "ask_tell.py"), run_name="__main__")
    lines = [
        line for line in capsys.readouterr().out.splitlines() if "labels: test accuracy" in line
    ]
    assert len(lines) == 5
    accuracies = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert accuracies[-1] > accuracies[0] and accuracies[-1] > 0.8
    assert (tmp_path / "runs" / "ask_tell_state.pt").is_file()
