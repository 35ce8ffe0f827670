"""`rlopt bench optim` writes a table, a PNG, a JSON summary and TensorBoard logs; `rlopt plot` draws them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlopt.cli import main
from rlopt.tools import compare
from rlopt.tools.plotting import read_scalars


def test_bench_optim_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "optim", "--tasks", "breast_cancer", "--epochs", "2", "--seeds", "0",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "breast_cancer" in text and "ponos" in text
    rows = json.loads((out / "summary.json").read_text())
    names = [r["optimizer"] for r in rows]
    assert names[:5] == list(compare.RULES)
    assert names[5].startswith("sgd lr=") and names[6].startswith("adam lr=")
    assert (out / "bench_optim.png").stat().st_size > 10_000
    scalars = read_scalars(out / "tensorboard")
    tags = {t for by_tag in scalars.values() for t in by_tag}
    assert {"sls/step_size", "sls/backtracks", "ponos/train_loss"} <= tags
    png = tmp_path / "scalars.png"
    assert main(["plot", str(out / "tensorboard"), "--out", str(png), "--tags", "sls/step_size"]) == 0
    assert png.stat().st_size > 5_000


def test_plot_reports_a_missing_dir_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(tmp_path / "nope")])
    message = str(exc.value.code)
    assert message.startswith("rlopt plot: run_dir does not exist") and "\n" not in message


def test_run_trains_and_records() -> None:
    task = compare.load_task("breast_cancer")
    result = compare.run(task, "sps", {"max_lr": 10.0}, epochs=3, seed=0)
    assert len(result.losses) == 4 and result.losses[-1] < 0.5 * result.losses[0]
    assert len(result.step_sizes) == 3 * math.ceil(task.x.shape[0] / task.batch_size)
    assert result.epochs_to(result.losses[-1]) <= 3
    with pytest.raises(ValueError, match="Invalid dataset"):
        compare.load_task("mnist")
