"""benchmarks/bench_suite.py: re-run cells are merged into the run archive and the table keeps the other rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_suite

from rlopt.agents import suite


def _record(rule: str, seed: int, final: float, best: float | None = None) -> dict[str, object]:
    return {"algorithm": "PPO", "env": "CartPole-v1", "rule": rule, "seed": seed, "budget": 100, "eval_every": 5,
            "eval_episodes": 20, "final": final, "final_std": 0.0, "best": best or final,
            "curve": [(50, final / 2 + 0.04), (100, final)], "train_seconds": 1.0, "timesteps": 100,
            "failures": 0.0, "skipped": 0.0}


def test_a_rerun_replaces_its_runs_in_the_archive_and_keeps_the_others(tmp_path: Path) -> None:
    archive = tmp_path / "runs.jsonl"
    bench_suite.merge_archive([_record("adam", 0, 400.0), _record("sls", 0, 300.0)], archive)
    merged = bench_suite.merge_archive([_record("sls", 0, 450.0), _record("sls", 1, 480.0)], archive)
    assert [(r["rule"], r["seed"], r["final"]) for r in merged] == [("adam", 0, 400.0), ("sls", 0, 450.0),
                                                                   ("sls", 1, 480.0)]
    lines = archive.read_text().splitlines()
    assert [json.loads(line) for line in lines] == merged
    assert merged[1]["curve"] == [[50, 225.0], [100, 450.0]]  # rounded to 0.1, as lists


def test_rows_without_archived_runs_keep_their_published_values(tmp_path: Path) -> None:
    published = tmp_path / "agents_suite.json"
    published.write_text(json.dumps({"rows": [
        ["PPO", "CartPole-v1", "adam", 100, 413.0, 500.0, 1.0, "2/5", "missed"],
        ["PPO", "CartPole-v1", "sps", 100, 366.2, 490.7, 0.88, "3/5", "missed"],
        ["A2C", "Acrobot-v1", "sls", 500, -83.3, -73.4, 1.0, "0/5", "met"]]}))
    archived = [_record("sps", 0, 412.0), _record("sps", 1, 22.0, best=500.0)]
    rows, notes = bench_suite._merged_rows(archived, {"CartPole-v1": 22.0}, published)
    by_cell = {(r["algorithm"], r["env"], r["rule"]): r for r in rows}
    # SPS is re-summarized against the published Adam final (no Adam runs archived): (217 - 22) / (413 - 22)
    sps = by_cell[("PPO", "CartPole-v1", "sps")]
    assert sps["score"] == pytest.approx((217.0 - 22.0) / (413.0 - 22.0)) and sps["collapsed"] == 1
    assert sps["seeds"] == 2 and sps["meets_target"] is False
    # the others keep their published values
    kept = by_cell[("A2C", "Acrobot-v1", "sls")]
    assert (kept["final"], kept["score"], kept["collapsed"], kept["seeds"], kept["meets_target"]) == (
        -83.3, 1.0, 0, 5, True)
    assert by_cell[("PPO", "CartPole-v1", "adam")]["final"] == 413.0
    assert "1 rows are summarized" in notes and "A2C Acrobot-v1: sls" in notes
    assert list(by_cell) == sorted(by_cell)


def test_summarize_takes_a_reference_for_adam_when_no_adam_runs_are_given() -> None:
    rows = suite.summarize([_record("sls", 0, 261.0)], {"CartPole-v1": 22.0}, reference={("PPO", "CartPole-v1"): 500.0})
    assert rows[0]["score"] == pytest.approx((261.0 - 22.0) / (500.0 - 22.0))


def test_every_algorithms_plot_is_kept_whichever_cells_were_rerun(tmp_path: Path) -> None:
    """Re-running PPO cells alone must not drop A2C's plot from the page: an algorithm whose archive covers every
    env is redrawn, one that does not keeps its published plot (and the notes say so)."""
    archived = [{**_record(rule, 0, 100.0), "algorithm": "PPO", "env": env} for env in suite.ENVS
                for rule in suite.RULES]
    archived += [{**_record("adam", 0, 100.0), "algorithm": "A2C", "env": "CartPole-v1"}]
    (tmp_path / "agents_suite_A2C.png").write_bytes(b"published")
    plots, notes = bench_suite.suite_plots(archived, 1, tmp_path)
    assert plots == [tmp_path / "agents_suite_PPO.png", tmp_path / "agents_suite_A2C.png"]
    assert (tmp_path / "agents_suite_PPO.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "agents_suite_A2C.png").read_bytes() == b"published"
    assert "The A2C plot is the full run's" in notes and "PPO" not in notes
    archived += [{**_record(rule, 0, 100.0), "algorithm": "A2C", "env": env} for env in suite.ENVS
                 for rule in suite.RULES]
    plots, notes = bench_suite.suite_plots(archived, 1, tmp_path)
    assert len(plots) == 2 and notes == ""
    assert (tmp_path / "agents_suite_A2C.png").read_bytes()[:4] == b"\x89PNG"
