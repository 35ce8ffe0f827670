"""Shared test configuration: the `gpu` marker skips without CUDA; `device` parametrizes CPU (and CUDA)."""

from __future__ import annotations

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
