"""Problems: data handling, local MNIST-format loading, hypergradients of each problem, docstring examples."""

from __future__ import annotations

import doctest
import gzip
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from rlopt.bilevel import hypergradient
from rlopt.bilevel.problems import PROBLEMS, DataHyperCleaning, HyperRepresentation, RegularizationHPO, Ridge
from rlopt.bilevel.problems._data import read_idx

F64 = torch.float64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_corruption_rate_and_labels() -> None:
    p = DataHyperCleaning(corruption=0.5, n_train=400, n_val=100, n_test=100, seed=2)
    assert int(p.noisy_mask.sum()) == 200
    # Clean samples keep their labels; noisy ones were redrawn uniformly (about 1 in 10 unchanged).
    assert torch.equal(p.train_y[~p.noisy_mask], p.clean_train_y[~p.noisy_mask])
    changed = float((p.train_y[p.noisy_mask] != p.clean_train_y[p.noisy_mask]).double().mean())
    assert 0.8 < changed < 0.97
    clean = DataHyperCleaning(corruption=0.0, n_train=400, n_val=100, n_test=100, seed=2)
    assert not bool(clean.noisy_mask.any()) and torch.equal(clean.train_y, clean.clean_train_y)


def test_splits_are_disjoint_and_seeded() -> None:
    a = DataHyperCleaning(seed=0)
    b = DataHyperCleaning(seed=0)
    c = DataHyperCleaning(seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.n_lower + a.n_upper + len(a.test_x) == 1797
    rows = {tuple(r.tolist()) for r in a.val_x}
    assert len(rows & {tuple(r.tolist()) for r in a.test_x}) < 0.05 * len(rows)  # digits has a few duplicates


def test_batches_come_from_the_generator() -> None:
    p = DataHyperCleaning(lower_batch_size=32, upper_batch_size=16)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    b1, b2 = p.sample_lower_batch(g1), p.sample_lower_batch(g2)
    assert b1 is not None and b2 is not None and torch.equal(b1, b2) and len(b1) == 32
    assert len(set(b1.tolist())) == 32
    full = DataHyperCleaning()
    assert full.sample_lower_batch(g1) is None


def write_mnist_like(directory: Path, n_train: int = 60, n_test: int = 20, gz: bool = False) -> None:
    rng = np.random.default_rng(0)

    def write(name: str, array: np.ndarray) -> None:
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        payload = header + array.astype(np.uint8).tobytes()
        if gz:
            with gzip.open(directory / (name + ".gz"), "wb") as fh:
                fh.write(payload)
        else:
            (directory / name).write_bytes(payload)

    write("train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)))
    write("train-labels-idx1-ubyte", rng.integers(0, 10, n_train))
    write("t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write("t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))


@pytest.mark.parametrize("gz", [False, True])
def test_local_mnist_idx_directory(tmp_path: Path, gz: bool) -> None:
    write_mnist_like(tmp_path, gz=gz)
    images = read_idx(next(tmp_path.glob("train-images*")))
    assert images.shape == (60, 28, 28)
    p = DataHyperCleaning(dataset=str(tmp_path), n_train=40, n_val=20, corruption=0.5)
    assert p.train_x.shape == (40, 784) and len(p.test_x) == 20
    assert float(p.train_x.max()) <= 1.0
    hg = hypergradient(p.upper_loss, p.lower_loss, p.initial_x(), p.initial_y(), "cg", maxiter=3)
    assert hg.shape == (40,)


def test_local_mnist_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "fashion.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 50),
        x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 10),
    )
    p = HyperRepresentation(dataset=str(path), n_train=30, n_val=20, hidden=8)
    assert p.train_x.shape == (30, 784) and len(p.test_x) == 10
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks arrays \['x_test', 'x_train', 'y_test', 'y_train'\]"):
        DataHyperCleaning(dataset=str(bad))


def test_bad_dataset_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Invalid dataset: 'mnist'.*nothing is downloaded"):
        DataHyperCleaning(dataset="mnist")
    with pytest.raises(FileNotFoundError, match="IDX"):
        DataHyperCleaning(dataset=str(tmp_path))
    with pytest.raises(ValueError, match="Invalid corruption"):
        DataHyperCleaning(corruption=1.0)
    with pytest.raises(ValueError, match="Invalid lower_batch_size"):
        DataHyperCleaning(lower_batch_size=0)
    with pytest.raises(ValueError, match="exceeds"):
        DataHyperCleaning(n_train=2000)
    with pytest.raises(ValueError, match="Invalid hidden"):
        HyperRepresentation(hidden=0)
    with pytest.raises(TypeError, match="Invalid dtype"):
        RegularizationHPO(dtype=torch.int64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RegularizationHPO(dtype=F64),
        lambda: HyperRepresentation(hidden=4, n_train=150, n_val=100, n_test=100, dtype=F64),
        lambda: DataHyperCleaning(n_train=100, n_val=80, n_test=50, dtype=F64),
    ],
    ids=["regularization", "representation", "hypercleaning"],
)
def test_problem_hypergradients_cg_equals_exact(make: object) -> None:
    """At any y where ∇²_yy g is positive definite, CG and the dense solve give the same implicit formula."""
    p = make()  # type: ignore[operator]
    x = p.initial_x()
    y = p.initial_y()
    # A few plain gradient steps so that y is not the symmetric all-zero point.
    for _ in range(20):
        g = torch.func.grad(p.lower_loss, argnums=1)(x, y)
        y = {k: v - 0.5 * g[k] for k, v in y.items()}
    exact = hypergradient(p.upper_loss, p.lower_loss, x, y, "exact", max_dim=5000)
    cg = hypergradient(p.upper_loss, p.lower_loss, x, y, "cg", maxiter=500, rtol=1e-12)
    flat = (lambda t: torch.cat([v.reshape(-1) for v in t.values()])) if isinstance(exact, dict) else (lambda t: t)
    assert rel_err(flat(cg), flat(exact)) < 1e-7


def test_metrics_keys() -> None:
    assert set(PROBLEMS) == {"ridge", "hypercleaning", "regularization", "representation", "metagrad"}
    p = DataHyperCleaning()
    m = p.metrics(p.initial_x(), p.initial_y())
    assert {"val_loss", "val_accuracy", "test_loss", "test_accuracy", "weight_noisy", "weight_clean"} <= set(m)
    r = Ridge()
    assert r.metrics(r.initial_x(), r.solve_lower(r.initial_x()))["lower_error"] < 1e-12


def test_device_placement(device: torch.device) -> None:
    p = DataHyperCleaning(device=device, lower_batch_size=16)
    assert p.train_x.device.type == device.type
    batch = p.sample_lower_batch(torch.Generator().manual_seed(0))
    assert batch is not None and batch.device.type == device.type
    assert p.lower_loss(p.initial_x(), p.initial_y(), batch).device.type == device.type


@pytest.mark.parametrize(
    "name", ["rlopt.bilevel.solver", "rlopt.bilevel.upper_rules", "rlopt.bilevel.problems.classification"]
)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
