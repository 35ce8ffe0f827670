"""``rlopt.agents.rema.cli.main``: a short end-to-end run writes checkpoints, history, TensorBoard logs and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlopt.agents.rema import ReMA
from rlopt.agents.rema.cli import build_parser, main
from rlopt.agents.rema.plotting import plot_accuracy


def test_cli_trains_rema_and_baselines_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        status = main(["--baselines", "--updates", "2", "--warm-start-steps", "2", "--batch-questions", "2",
                       "--n-plans", "2", "--n-answers", "1", "--max-new-tokens", "16", "--d-model", "16",
                       "--n-layers", "1", "--eval-every", "1", "--eval-size", "4", "--out", str(out),
                       "--tensorboard-log", str(tmp_path / "tb"), "--optimizer", "sls", "--reasoner-optimizer", "adam",
                       "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    history = json.loads((out / "history.json").read_text())
    assert set(history) == {"rema", "vrp", "mrp"}
    assert [row["update"] for row in history["rema"]] == [0, 1, 2]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["mrp_1", "rema_1", "vrp_1"]
    agent = ReMA.load(out / "rema.pt")
    assert agent.num_updates == 2 and type(agent.optimizers["meta"]).__name__ == "SLS"
    assert "wrote" in capsys.readouterr().out


def test_cli_help_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--baselines" in build_parser().format_help()
    with pytest.raises(SystemExit):
        main(["--algorithm", "ppo"])
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            main(["--threads", bad])
        assert "--threads" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["--tasks", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])


def test_plot_accuracy_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="x"):
        plot_accuracy({"a": [{"samples": 0.0, "accuracy": 0.1}]}, tmp_path / "a.png", x="time")
    with pytest.raises(ValueError, match="no run"):
        plot_accuracy({"a": [{"samples": 0.0}]}, tmp_path / "a.png")


def test_cli_prompt_filter_and_meta_reward_options(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--updates", "2", "--warm-start-steps", "1", "--batch-questions", "2", "--n-plans", "1",
            "--n-answers", "2", "--max-new-tokens", "8", "--d-model", "16", "--n-layers", "1", "--eval-size", "2",
            "--switch-every", "1", "--filter-k", "2", "--filter-pool", "3", "--out", str(out),
            "--tensorboard-log", "", "--quiet"]
    with pytest.warns(RuntimeWarning, match="kept no question"):  # an untrained reasoner never answers right
        assert main([*argv, "--prompt-filter", "on", "--meta-reward", "consistency"]) == 0
    agent = ReMA.load(out / "rema.pt")
    assert agent.prompt_filter == (0.2, 0.8) and agent.filter_k == 2 and agent.filter_pool == 3
    assert agent.rewards.meta_reward == "consistency" and agent.filter_fallbacks == 2
    with pytest.warns(RuntimeWarning, match="kept no question"):
        assert main([*argv, "--prompt-filter", "0.1,0.9"]) == 0
    assert ReMA.load(out / "rema.pt").prompt_filter == (0.1, 0.9)
    assert main(argv) == 0
    loaded = ReMA.load(out / "rema.pt")
    assert loaded.prompt_filter is None and loaded.rewards.meta_reward == "correctness"
    for bad in (["--prompt-filter", "0.2"], ["--prompt-filter", "a,b"], ["--meta-reward", "majority"]):
        with pytest.raises(SystemExit):
            main([*argv, *bad])
    with pytest.raises(ValueError, match="prompt_filter"):
        main([*argv, "--prompt-filter", "0.9,0.1"])
