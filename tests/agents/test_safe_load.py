"""Loading a model never runs code from the file; bad files fail with a clear ValueError naming them."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import stable_baselines3
import torch
from stable_baselines3.common.env_util import make_vec_env

from rlopt import agents
from rlopt.agents import sb3
from rlopt.agents.hyperparams import linear_schedule

SMALL = {"seed": 0, "device": "cpu"}
MAKERS = {
    "PPO": lambda **k: agents.PPO("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=8, batch_size=16, n_epochs=1,
                                  **SMALL, **k),
    "A2C": lambda **k: agents.A2C("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=8, **SMALL, **k),
    "REINFORCE": lambda **k: agents.REINFORCE("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=64, **SMALL, **k),
    "sb3.PPO": lambda **k: sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, n_epochs=1, **SMALL, **k),
}
LOADERS = {"PPO": agents.PPO, "A2C": agents.A2C, "REINFORCE": agents.REINFORCE, "sb3.PPO": sb3.PPO}


class Payload:
    """Unpickling this creates a file: the stand-in for a checkpoint that runs a command on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def _rewrite(path: Path, out: Path, edit: Any) -> None:
    """Copy the model zip ``path`` to ``out`` with its ``data`` JSON changed by ``edit(data)``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            content = src.read(name)
            if name == "data":
                data = json.loads(content)
                edit(data)
                content = json.dumps(data).encode()
            dst.writestr(name, content)


def _pickled(obj: object) -> dict[str, str]:
    return {":type:": "<class 'object'>", ":serialized:": base64.b64encode(pickle.dumps(obj)).decode()}


MODELS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, make in MAKERS.items():
        model = make(learning_rate=linear_schedule(1e-3))
        model.learn(128)
        out[name] = tmp_path_factory.mktemp(name.replace(".", "_")) / "model.zip"
        model.save(out[name])
        MODELS[name] = model
    return out


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("key", ["lr_schedule", "an_unknown_key"])
def test_a_payload_in_any_entry_is_refused_and_never_runs(name: str, key: str, saved: dict[str, Path],
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.zip"
    _rewrite(saved[name], evil, lambda data: data.__setitem__(key, _pickled(Payload(marker))))
    with pytest.raises(ValueError, match=rf"evil\.zip: data\['{key}'\] is a pickle that needs pathlib\.Path\.touch"
                                         r".*trusted=True"):
        LOADERS[name].load(evil)
    assert not marker.exists()


@pytest.mark.parametrize("name", list(MAKERS))
def test_the_projects_own_checkpoints_load_without_the_opt_in_and_predict_the_same(
    name: str, saved: dict[str, Path]
) -> None:
    original = MODELS[name]
    model = LOADERS[name].load(saved[name])
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    a, _ = original.predict(obs, deterministic=True)
    b, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a, b)
    assert model.lr_schedule(0.5) == pytest.approx(5e-4)  # the linear schedule came back as data
    for p, q in zip(original.policy.parameters(), model.policy.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_checkpoint_written_by_stable_baselines3_loads(tmp_path: Path) -> None:
    ref = stable_baselines3.PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), n_steps=16,
                                batch_size=16, n_epochs=1, seed=0)
    ref.learn(32)
    ref.save(tmp_path / "sb3.zip")
    model = sb3.PPO.load(tmp_path / "sb3.zip")
    obs = np.zeros((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], ref.predict(obs, deterministic=True)[0])


def test_a_pickled_function_needs_the_opt_in(tmp_path: Path) -> None:
    """A schedule pickled by value (a lambda, as older SB3 versions saved them) is code: refused unless trusted."""
    model = MAKERS["PPO"](learning_rate=lambda progress: 1e-3 * progress)
    model.save(tmp_path / "m.zip")
    refused = r"data\['(learning_rate|lr_schedule)'\] is a pickle that needs cloudpickle.*trusted=True"
    with pytest.raises(ValueError, match=refused):
        agents.PPO.load(tmp_path / "m.zip")
    loaded = agents.PPO.load(tmp_path / "m.zip", trusted=True)
    assert loaded.lr_schedule(0.5) == pytest.approx(5e-4)


def test_truncated_wrong_and_foreign_files_name_the_file_and_what_was_expected(saved: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(saved["PPO"].read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated\.zip is not a complete zip archive"):
        agents.PPO.load(truncated)
    with pytest.raises(ValueError, match=r"holds a rlopt\.agents\.PPO model, expected rlopt\.agents\.A2C"):
        agents.A2C.load(saved["PPO"])
    no_data = tmp_path / "nodata.zip"
    with zipfile.ZipFile(no_data, "w") as z:
        z.writestr("policy.pth", b"")
    with pytest.raises(ValueError, match=r"nodata\.zip has no 'data' entry"):
        agents.PPO.load(no_data)
    with pytest.raises(FileNotFoundError, match=r"missing\.zip is not a file"):
        agents.PPO.load(tmp_path / "missing.zip")


def test_vec_normalize_statistics_round_trip_as_json_and_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), clip_obs=5.0, gamma=0.98)
    venv.reset()
    for _ in range(20):
        venv.step(np.zeros((2, 1), dtype=np.float32))
    agents.save_vec_normalize(venv, tmp_path / "stats.json")
    loaded = agents.load_vec_normalize(tmp_path / "stats.json", make_vec_env("Pendulum-v1", n_envs=2, seed=1))
    obs = np.random.default_rng(0).normal(size=(2, 3))
    np.testing.assert_array_equal(loaded.normalize_obs(obs), venv.normalize_obs(obs))
    assert (loaded.clip_obs, loaded.gamma, loaded.obs_rms.count) == (5.0, 0.98, venv.obs_rms.count)
    marker = tmp_path / "payload-ran"
    (tmp_path / "pickled.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=r"pickled\.pkl is not JSON"):
        agents.load_vec_normalize(tmp_path / "pickled.pkl", make_vec_env("Pendulum-v1", n_envs=2))
    assert not marker.exists()
    with pytest.raises(ValueError, match="shape"):
        agents.load_vec_normalize(tmp_path / "stats.json", make_vec_env("CartPole-v1", n_envs=2))
