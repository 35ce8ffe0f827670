"""benchmarks/report.py: saved tables render into the results page, grouped by package, with their commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import report


def test_saved_tables_render_by_package_with_protocol_command_table_and_machine(tmp_path: Path) -> None:
    results = tmp_path / "results"
    report.save("b_envs", package="envs", title="Env throughput", protocol="Steps per second.",
                columns=["env", "rate"], rows=[["CartPole-v1", 1.5e6]], command="python benchmarks/x.py --a",
                results_dir=results)
    report.save("a_optim", package="rlopt", title="Optimizer cost", protocol="Median of repeats.",
                columns=["optimizer", "x SGD"], rows=[["sls", 1.46], ["sgd", 1.0]], plots=["benchmarks/p.png"],
                notes="- a note", command="python benchmarks/y.py", results_dir=results)
    record = json.loads((results / "a_optim.json").read_text())
    assert record["machine"]["cores"] and record["machine"]["torch"]
    page = report.render(report.load(results), page_dir=tmp_path / "benchmarks")
    assert page.index("## rlopt: the step-size optimizers") < page.index("## rlopt.envs: tensor-batched")
    assert "| optimizer | x SGD |\n|---|---|\n| sls | 1.46 |\n| sgd | 1 |" in page
    assert "```bash\npython benchmarks/y.py\n```" in page and "Median of repeats." in page
    assert "| CartPole-v1 | 1,500,000 |" in page and "- a note" in page and "![p](p.png)" in page
    assert "**Machines**" in page and "1. " in page and "machine 1" in page


def test_bad_tables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Invalid package"):
        report.save("x", package="nope", title="t", protocol="p", columns=["a"], rows=[[1]], results_dir=tmp_path)
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        report.save("x", package="envs", title="t", protocol="p", columns=["a", "b"], rows=[[1]], results_dir=tmp_path)
    with pytest.raises(SystemExit, match="no tables"):
        report.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "README.md")])
