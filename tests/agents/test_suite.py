"""The tuning-free suite (rlopt bench agents): budgets within the RL Zoo's, the normalized score, resumable runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlopt.agents import suite
from rlopt.cli import main


def test_every_budget_is_at_most_the_rl_zoos_and_quick_is_one_short_seed() -> None:
    args = suite._parser().parse_args([])
    runs = suite.plan(args)
    assert len(runs) == 2 * 5 * 5 * 5
    assert all(r.budget <= suite.ZOO_TIMESTEPS[(r.algorithm, r.env)] for r in runs)
    quick = suite.plan(suite._parser().parse_args(["--quick"]))
    assert {r.seed for r in quick} == {0} and len(quick) == 2 * 5 * 5
    assert all(r.budget <= min(50_000, suite.ZOO_TIMESTEPS[(r.algorithm, r.env)]) for r in quick)


def test_the_normalized_score_and_the_collapse_rule() -> None:
    def rec(rule: str, seed: int, final: float, best: float) -> dict[str, object]:
        return {"algorithm": "PPO", "env": "CartPole-v1", "rule": rule, "seed": seed, "budget": 10,
                "final": final, "best": best}

    records = [rec("adam", 0, 400.0, 450.0), rec("adam", 1, 500.0, 500.0), rec("adam", 2, 450.0, 460.0),
               rec("sls", 0, 440.0, 450.0), rec("sls", 1, 430.0, 440.0), rec("sls", 2, 100.0, 450.0)]
    rows = {r["rule"]: r for r in suite.summarize(records, {"CartPole-v1": 20.0})}
    assert rows["adam"]["score"] == pytest.approx(1.0)
    assert rows["sls"]["score"] == pytest.approx((430.0 - 20.0) / (450.0 - 20.0))
    assert rows["sls"]["collapsed"] == 1 and not rows["sls"]["meets_target"]  # seed 2 fell from 0.98 to 0.19
    assert rows["adam"]["meets_target"]
    # where tuned Adam is no better than random the score is undefined, not inverted
    flat = [rec("adam", 0, 15.0, 30.0), rec("sls", 0, 300.0, 300.0)]
    undefined = {r["rule"]: r for r in suite.summarize(flat, {"CartPole-v1": 20.0})}
    assert math.isnan(undefined["sls"]["score"]) and undefined["sls"]["meets_target"] is None


def test_random_return_is_a_random_policys_mean() -> None:
    value = suite.random_return("CartPole-v1", episodes=20)
    assert 10.0 < value < 40.0  # a uniform-random CartPole episode lasts about 22 steps
    assert suite.random_return("Pendulum-v1", episodes=4) < -800.0


def test_a_run_writes_its_record_and_is_skipped_when_it_exists(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "agents", "--algorithms", "A2C", "--envs", "CartPole-v1", "--rules", "adam", "sps",
            "--seeds", "1", "--max-steps", "2048", "--jobs", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    record = json.loads((tmp_path / "A2C_CartPole-v1_sps_s0.json").read_text())
    assert record["timesteps"] >= 2048 and len(record["curve"]) >= 10 and math.isfinite(record["final"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {row["rule"] for row in summary["rows"]} == {"adam", "sps"}
    capsys.readouterr()
    assert main(argv) == 0
    assert "2 runs, 2 done already" in capsys.readouterr().out
