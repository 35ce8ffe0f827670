"""Shared test configuration: the `gpu` marker skips without CUDA; `device` parametrizes CPU (and CUDA)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _devices() -> list[object]:
    devices: list[object] = ["cpu"]
    devices.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return devices


@pytest.fixture(params=_devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True, scope="session")
def _sb3_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """stable-baselines3's own algorithms (the references some tests compare against) make an empty
    ``<tempdir>/SB3-<date>`` folder per ``learn``; keep them under pytest's temporary directory."""
    previous = os.environ.get("SB3_LOGDIR")
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))
    yield
    if previous is None:
        os.environ.pop("SB3_LOGDIR", None)
    else:
        os.environ["SB3_LOGDIR"] = previous


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything imported a layer by its folder name (``envs`` instead of ``rlopt.envs``): from a
    checkout's root the folders are importable by accident, and a second copy of a package splits its classes."""
    import sys

    bare = sorted(m for m in sys.modules if m.split(".")[0] in {"envs", "agents", "bilevel", "tools"})
    if bare:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: modules imported by folder name instead of rlopt.*: {bare}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
