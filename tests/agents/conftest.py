"""Agents tests run their small networks single-threaded: on a 2-core machine, intra-op threads only add
synchronization cost to these tiny ops (and make timings erratic when other work shares the cores)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
