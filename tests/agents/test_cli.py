"""rlopt.agents.cli.train_main: the `rlopt train` logic end to end on a small budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlopt import agents
from rlopt.agents.cli import train_main


def test_train_main_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text("n_steps: 8\nbatch_size: 256\nn_epochs: 1\n")
    code = train_main(["ppo", "CartPole-v1", "--optimizer", "sls", "--n-envs", "32", "--total-timesteps", "512",
                       "--config", str(config), "--log-dir", str(tmp_path / "runs"), "--no-progress",
                       "--eval-episodes", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Final evaluation over 2 episodes" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name == "PPO_CartPole-v1_sls_s0_1"
    assert (run_dir / "training.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    model = agents.PPO.load(run_dir / "model.zip")
    assert model.n_steps == 8 and model.optimizer_name == "sls"


def test_train_main_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        train_main(["DQN"])
    with pytest.raises(SystemExit):
        train_main(["ppo", "CartPole-v1", "--optimizer", "adamw"])
    with pytest.raises(SystemExit, match="positive"):
        train_main(["ppo", "CartPole-v1", "--total-timesteps", "0", "--log-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="Unknown env id"):
        train_main(["ppo", "NoSuchEnv-v0", "--log-dir", str(tmp_path)])


def test_train_main_env_kwargs(tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text("n_steps: 8\nbatch_size: 64\nn_epochs: 1\nenv_kwargs: {max_episode_steps: 30, dtype: float32}\n")
    code = train_main(["ppo", "CartPole-v1", "--n-envs", "8", "--total-timesteps", "64", "--config", str(config),
                       "--env-kwargs", '{"max_episode_steps": 12}', "--log-dir", str(tmp_path / "runs"),
                       "--no-progress", "--eval-episodes", "2", "--eval-freq", "0"])
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    model = agents.PPO.load(run_dir / "model.zip")
    # the command line's keys override the config's, the others stay
    assert model.env_kwargs == {"max_episode_steps": 12, "dtype": "float32"}
    with pytest.raises(SystemExit, match="JSON object"):
        train_main(["ppo", "CartPole-v1", "--env-kwargs", "[12]", "--log-dir", str(tmp_path)])


def test_an_unknown_env_id_is_one_line_from_the_rlopt_command(capsys: pytest.CaptureFixture[str]) -> None:
    from rlopt.cli import main

    assert main(["train", "PPO", "NoSuchEnv-v0", "--total-timesteps", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlopt train: Unknown env id: 'NoSuchEnv-v0'") and err.count("\n") == 1
