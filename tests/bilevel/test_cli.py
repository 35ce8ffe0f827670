"""The `rlopt bilevel` logic: a short run writes history, summary and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlopt.bilevel.cli import main


def test_cli_ridge_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(
        ["ridge", "--outer-steps", "4", "--eval-every", "2", "--dtype", "float64", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    data = json.loads((out / "history.json").read_text())
    assert len(data["records"]) == 4 and data["arguments"]["algorithm"] == "stocbio"
    assert "value" in data["records"][1]
    assert (out / "summary.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    assert "ridge-stocbio-bisls-bisls-s0" in capsys.readouterr().out


def test_cli_hypercleaning_double_loop(tmp_path: Path) -> None:
    args = [
        "hypercleaning",
        "--algorithm",
        "double_loop",
        "--hypergrad",
        "neumann",
        "--upper",
        "adam",
        "--lower",
        "sgd",
    ]
    args += [
        "--outer-steps",
        "2",
        "--inner-steps",
        "2",
        "--batch-size",
        "64",
        "--out",
        str(tmp_path),
        "--no-tensorboard",
    ]
    assert main([*args, "--no-progress"]) == 0
    records = json.loads((tmp_path / "history.json").read_text())["records"]
    assert "test_accuracy" in records[-1]


def test_cli_rejects_unknown_problem() -> None:
    with pytest.raises(SystemExit):
        main(["rl"])
