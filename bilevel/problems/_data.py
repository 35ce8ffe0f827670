"""Offline data for the classification problems: scikit-learn's bundled sets, or MNIST-format local files.

Nothing here downloads. MNIST or FashionMNIST are read from files the user already has:

- an ``.npz`` archive with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (the Keras ``mnist.npz`` /
  ``fashion_mnist`` layout), or
- a directory holding the four IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (optionally ``.gz``), the layout of the original
  distribution and of ``torchvision``'s ``MNIST/raw`` folder.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class ClassificationData:
    """Features in ``[0, 1]`` (flattened) and integer labels; ``test_*`` is None when no test split exists."""

    features: np.ndarray
    labels: np.ndarray
    test_features: np.ndarray | None
    test_labels: np.ndarray | None
    n_classes: int


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (big-endian header: magic with the dtype code and rank, then the dimensions)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported, got type code {raw[2]:#x}")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {data.size} values")
    return data.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory} has no {stem}[.gz]; expected the four MNIST-format IDX files")


def load_mnist_format(path: str | Path) -> ClassificationData:
    """MNIST or FashionMNIST from a local ``.npz`` archive or a directory of IDX files (see module doc)."""
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (nothing is downloaded; point to local files)")
    if source.is_dir():
        arrays = {key: read_idx(_find_idx(source, stem)) for key, stem in IDX_FILES.items()}
        x_train, y_train = arrays["train_images"], arrays["train_labels"]
        x_test, y_test = arrays["test_images"], arrays["test_labels"]
    elif source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as archive:  # arrays only: an object array would unpickle
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise ValueError(f"{source} lacks arrays {sorted(missing)}; has {sorted(archive.files)}")
            x_train, y_train = archive["x_train"], archive["y_train"]
            x_test, y_test = archive["x_test"], archive["y_test"]
    else:
        raise ValueError(f"{source}: expected an .npz file or a directory of IDX files")
    scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    return ClassificationData(
        features=x_train.reshape(len(x_train), -1).astype(np.float64) / scale,
        labels=y_train.astype(np.int64).reshape(-1),
        test_features=x_test.reshape(len(x_test), -1).astype(np.float64) / scale,
        test_labels=y_test.astype(np.int64).reshape(-1),
        n_classes=int(max(y_train.max(), y_test.max())) + 1,
    )


def load_digits_data() -> ClassificationData:
    """scikit-learn's bundled 8x8 digits (1797 samples, 10 classes), scaled to ``[0, 1]``; no test split."""
    from sklearn.datasets import load_digits

    data, target = load_digits(return_X_y=True)
    return ClassificationData(data / 16.0, target.astype(np.int64), None, None, 10)


def load_classification(dataset: str) -> ClassificationData:
    """``"digits"`` or a path to MNIST-format files."""
    if dataset == "digits":
        return load_digits_data()
    if Path(dataset).expanduser().exists():
        return load_mnist_format(dataset)
    raise ValueError(
        f"Invalid dataset: {dataset!r}, expected 'digits' or a path to a local MNIST/FashionMNIST .npz file or "
        "IDX directory (nothing is downloaded)"
    )
