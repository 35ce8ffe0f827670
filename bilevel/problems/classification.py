"""Classification bilevel problems: data hyper-cleaning, per-feature L2 tuning, hyper-representation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from rlopt.bilevel._tree import Tree
from rlopt.bilevel.problems._data import load_classification
from rlopt.bilevel.problems.base import BilevelProblem, check_batch_size, check_fraction, split_indices


def _take(t: Tensor, batch: Tensor | None) -> Tensor:
    return t if batch is None else t[batch]


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(-1) == labels).to(torch.float64).mean())


def _split_sizes(n: int, n_train: int | None, n_val: int | None, n_test: int | None) -> list[int]:
    sizes = [n_train, n_val, n_test]
    defaults = [round(0.45 * n), round(0.25 * n), n - round(0.45 * n) - round(0.25 * n)]
    out = [d if s is None else s for s, d in zip(sizes, defaults, strict=True)]
    for size, name in zip(out, ("n_train", "n_val", "n_test"), strict=True):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"Invalid {name}: {size!r}, expected a positive int")
    if sum(out) > n:
        raise ValueError(f"n_train + n_val + n_test = {sum(out)} exceeds the {n} available samples")
    return out


class _ClassificationProblem(BilevelProblem):
    """Shared data handling: splits, tensors on ``device``, batches, accuracy metrics."""

    def _setup_data(
        self,
        dataset: str,
        n_train: int | None,
        n_val: int | None,
        n_test: int | None,
        seed: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> torch.Generator:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"Invalid dtype: {dtype!r}, expected a floating torch.dtype")
        data = load_classification(dataset)
        gen = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_classes = data.n_classes
        features = torch.as_tensor(data.features, dtype=dtype)
        labels = torch.as_tensor(data.labels)
        if data.test_features is None or data.test_labels is None:
            sizes = _split_sizes(len(features), n_train, n_val, n_test)
            train, val, test = split_indices(len(features), sizes, gen)
            test_x, test_y = features[test], labels[test]
        else:
            sizes = [20000 if n_train is None else n_train, 5000 if n_val is None else n_val]
            for size, name in zip(sizes, ("n_train", "n_val"), strict=True):
                if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                    raise ValueError(f"Invalid {name}: {size!r}, expected a positive int")
            if sum(sizes) > len(features):
                raise ValueError(f"n_train + n_val = {sum(sizes)} exceeds the {len(features)} training samples")
            train, val = split_indices(len(features), sizes, gen)
            test_x = torch.as_tensor(data.test_features, dtype=dtype)
            test_y = torch.as_tensor(data.test_labels)
            if n_test is not None:
                test_x, test_y = test_x[:n_test], test_y[:n_test]
        self.train_x, self.train_y = features[train].to(self.device), labels[train].to(self.device)
        self.val_x, self.val_y = features[val].to(self.device), labels[val].to(self.device)
        self.test_x, self.test_y = test_x.to(self.device), test_y.to(self.device)
        self.n_lower, self.n_upper = len(self.train_x), len(self.val_x)
        self.n_features = self.train_x.shape[1]
        return gen

    def _set_batches(self, lower_batch_size: int | None, upper_batch_size: int | None) -> None:
        check_batch_size(lower_batch_size, "lower_batch_size", self.n_lower)
        check_batch_size(upper_batch_size, "upper_batch_size", self.n_upper)
        self.lower_batch_size, self.upper_batch_size = lower_batch_size, upper_batch_size

    def logits(self, x: Tree, y: Tree, inputs: Tensor) -> Tensor:
        """Class scores of the model at ``(x, y)``."""
        raise NotImplementedError

    def metrics(self, x: Tree, y: Tree) -> dict[str, float]:
        with torch.no_grad():
            val, test = self.logits(x, y, self.val_x), self.logits(x, y, self.test_x)
            return {
                "val_loss": float(F.cross_entropy(val, self.val_y)),
                "val_accuracy": _accuracy(val, self.val_y),
                "test_loss": float(F.cross_entropy(test, self.test_y)),
                "test_accuracy": _accuracy(test, self.test_y),
            }


class DataHyperCleaning(_ClassificationProblem):
    r"""Data hyper-cleaning (Franceschi et al., ICML 2017): learn per-sample weights on corrupted labels.

    A fraction ``corruption`` of the training labels is replaced by uniformly random labels. With
    ``x = λ ∈ R^n`` (one per training sample) and a linear classifier ``y = {"weight", "bias"}``:

        g(λ, y) = mean_i σ(λ_i) CE(y; a_i, b_i) + reg ‖W‖²,      f(λ, y) = mean_val CE(y; a, b),

    so ``y*(λ)`` fits the training set weighted by ``σ(λ)`` and the upper level tunes the weights so that the
    fit generalizes to the clean validation set. Noisy samples should end with small ``σ(λ_i)``.

    Args:
        dataset: ``"digits"`` (scikit-learn's bundled 8x8 digits: 45/25/30 % train/val/test split by default),
            or a path to local MNIST/FashionMNIST files (``.npz`` with ``x_train``/``y_train``/``x_test``/
            ``y_test``, or a directory of IDX files; train/val drawn from the training part, 20000/5000 by
            default, test = the test part). Nothing is downloaded.
        corruption: fraction ``p`` of training labels replaced by a uniform random label, ``0 <= p < 1``.
        reg: L2 coefficient on the weights (makes ``g`` strongly convex in ``y``).
        n_train, n_val, n_test: split sizes (defaults above).
        lower_batch_size, upper_batch_size: minibatch sizes (``None`` = full batch).
        seed: seed of the split and of the corruption.
        device, dtype: where and in what precision the data and variables live.

    Example:
        >>> from rlopt.bilevel import hypergradient
        >>> p = DataHyperCleaning(corruption=0.5)
        >>> x, y = p.initial_x(), p.initial_y()
        >>> hg = hypergradient(p.upper_loss, p.lower_loss, x, y, "cg", maxiter=5)
        >>> hg.shape == x.shape
        True
    """

    name = "hypercleaning"

    def __init__(
        self,
        *,
        dataset: str = "digits",
        corruption: float = 0.5,
        reg: float = 1e-3,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        lower_batch_size: int | None = None,
        upper_batch_size: int | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        check_fraction(corruption, "corruption")
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
            raise ValueError(f"Invalid reg: {reg!r}, expected a float > 0")
        gen = self._setup_data(dataset, n_train, n_val, n_test, seed, device, dtype)
        self._set_batches(lower_batch_size, upper_batch_size)
        self.reg = float(reg)
        self.corruption = float(corruption)
        n_noisy = round(corruption * self.n_lower)
        noisy = torch.randperm(self.n_lower, generator=gen)[:n_noisy].to(self.device)
        random_labels = torch.randint(0, self.n_classes, (n_noisy,), generator=gen).to(self.device)
        self.clean_train_y = self.train_y.clone()
        self.train_y = self.train_y.clone()
        self.train_y[noisy] = random_labels
        self.noisy_mask = torch.zeros(self.n_lower, dtype=torch.bool, device=self.device)
        self.noisy_mask[noisy] = True

    def initial_x(self) -> Tensor:
        return torch.zeros(self.n_lower, dtype=self.dtype, device=self.device)

    def initial_y(self) -> dict[str, Tensor]:
        return {
            "weight": torch.zeros(self.n_features, self.n_classes, dtype=self.dtype, device=self.device),
            "bias": torch.zeros(self.n_classes, dtype=self.dtype, device=self.device),
        }

    def logits(self, x: Tree, y: Tree, inputs: Tensor) -> Tensor:
        assert isinstance(y, dict)
        return inputs @ y["weight"] + y["bias"]

    def lower_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        assert isinstance(x, Tensor) and isinstance(y, dict)
        inputs, labels = _take(self.train_x, batch), _take(self.train_y, batch)
        per_sample = F.cross_entropy(self.logits(x, y, inputs), labels, reduction="none")
        weights = torch.sigmoid(_take(x, batch))
        return (weights * per_sample).mean() + self.reg * (y["weight"] ** 2).sum()

    def upper_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        inputs, labels = _take(self.val_x, batch), _take(self.val_y, batch)
        return F.cross_entropy(self.logits(x, y, inputs), labels)

    def metrics(self, x: Tree, y: Tree) -> dict[str, float]:
        assert isinstance(x, Tensor)
        out = super().metrics(x, y)
        with torch.no_grad():
            w = torch.sigmoid(x)
            if bool(self.noisy_mask.any()):
                out["weight_noisy"] = float(w[self.noisy_mask].mean())
            if bool((~self.noisy_mask).any()):
                out["weight_clean"] = float(w[~self.noisy_mask].mean())
        return out


class RegularizationHPO(_ClassificationProblem):
    r"""Per-feature L2 regularization of binary logistic regression, tuned on validation loss.

    Breast-cancer data (scikit-learn, 569 x 30, standardized with training statistics), ``x ∈ R^30``
    log-regularizations, ``y = {"weight": (30,), "bias": ()}``:

        g(x, y) = mean_train log(1 + exp(-s_i (a_iᵀw + b))) + ½ Σ_j exp(x_j) w_j² + ½ bias_reg b²,
        f(x, y) = mean_val log(1 + exp(-s_i (a_iᵀw + b))),   s_i ∈ {-1, +1}.

    Args:
        log_reg_init: initial value of each ``x_j``.
        bias_reg: fixed small L2 on the bias (keeps ``g`` strongly convex in all of ``y``).
        n_train, n_val, n_test: split sizes (default 45/25/30 %).
        lower_batch_size, upper_batch_size: minibatch sizes (``None`` = full batch).
        seed: split seed.
        device, dtype: placement and precision.

    Example:
        >>> p = RegularizationHPO()
        >>> sorted(p.metrics(p.initial_x(), p.initial_y()))
        ['test_accuracy', 'test_loss', 'val_accuracy', 'val_loss']
    """

    name = "regularization"

    def __init__(
        self,
        *,
        log_reg_init: float = -2.0,
        bias_reg: float = 1e-4,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        lower_batch_size: int | None = None,
        upper_batch_size: int | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from sklearn.datasets import load_breast_cancer

        data, target = load_breast_cancer(return_X_y=True)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"Invalid dtype: {dtype!r}, expected a floating torch.dtype")
        gen = torch.Generator().manual_seed(seed)
        features = torch.as_tensor(data, dtype=dtype)
        labels = torch.as_tensor(target)
        sizes = _split_sizes(len(features), n_train, n_val, n_test)
        train, val, test = split_indices(len(features), sizes, gen)
        mean, std = features[train].mean(0), features[train].std(0)
        self.device, self.dtype, self.n_classes = torch.device(device), dtype, 2

        def prepare(idx: Tensor) -> tuple[Tensor, Tensor]:
            return ((features[idx] - mean) / std).to(self.device), labels[idx].to(self.device)

        self.train_x, self.train_y = prepare(train)
        self.val_x, self.val_y = prepare(val)
        self.test_x, self.test_y = prepare(test)
        self.n_lower, self.n_upper, self.n_features = len(train), len(val), features.shape[1]
        self._set_batches(lower_batch_size, upper_batch_size)
        self.log_reg_init, self.bias_reg = float(log_reg_init), float(bias_reg)

    def initial_x(self) -> Tensor:
        return torch.full((self.n_features,), self.log_reg_init, dtype=self.dtype, device=self.device)

    def initial_y(self) -> dict[str, Tensor]:
        return {
            "weight": torch.zeros(self.n_features, dtype=self.dtype, device=self.device),
            "bias": torch.zeros((), dtype=self.dtype, device=self.device),
        }

    def _margin_loss(self, y: Tree, inputs: Tensor, labels: Tensor) -> Tensor:
        assert isinstance(y, dict)
        scores = inputs @ y["weight"] + y["bias"]
        signs = 2.0 * labels.to(scores.dtype) - 1.0
        return F.softplus(-signs * scores).mean()

    def logits(self, x: Tree, y: Tree, inputs: Tensor) -> Tensor:
        assert isinstance(y, dict)
        score = inputs @ y["weight"] + y["bias"]
        return torch.stack([torch.zeros_like(score), score], dim=-1)

    def lower_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        assert isinstance(x, Tensor) and isinstance(y, dict)
        fit = self._margin_loss(y, _take(self.train_x, batch), _take(self.train_y, batch))
        return fit + 0.5 * (torch.exp(x) * y["weight"] ** 2).sum() + 0.5 * self.bias_reg * y["bias"] ** 2

    def upper_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        return self._margin_loss(y, _take(self.val_x, batch), _take(self.val_y, batch))


class HyperRepresentation(_ClassificationProblem):
    r"""Hyper-representation learning (Franceschi et al., ICML 2018): the upper level learns the features.

    Upper variable ``x``: the parameters of a feature network ``φ_x`` (``Linear(d, hidden) -> tanh``, an
    ``nn.Module`` called with ``torch.func.functional_call``); lower variable ``y``: a linear head on the
    features, trained on the training split; the features are judged by the validation loss of that head:

        g(x, y) = mean_train CE(y; φ_x(a), b) + reg ‖W‖²,      f(x, y) = mean_val CE(y; φ_x(a), b).

    Args:
        dataset: ``"digits"`` or a path to local MNIST-format files (see :class:`DataHyperCleaning`).
        hidden: width of the feature layer.
        reg: L2 on the head weights.
        n_train, n_val, n_test: split sizes.
        lower_batch_size, upper_batch_size: minibatch sizes (``None`` = full batch).
        seed: split and initialization seed.
        device, dtype: placement and precision.

    Example:
        >>> p = HyperRepresentation(hidden=16)
        >>> sorted(p.initial_x())
        ['0.bias', '0.weight']
    """

    name = "representation"

    def __init__(
        self,
        *,
        dataset: str = "digits",
        hidden: int = 32,
        reg: float = 1e-3,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        lower_batch_size: int | None = None,
        upper_batch_size: int | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"Invalid hidden: {hidden!r}, expected a positive int")
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
            raise ValueError(f"Invalid reg: {reg!r}, expected a float > 0")
        gen = self._setup_data(dataset, n_train, n_val, n_test, seed, device, dtype)
        self._set_batches(lower_batch_size, upper_batch_size)
        self.hidden, self.reg = hidden, float(reg)
        # The module is only a template for functional_call; its own parameters are never used.
        self.features_net = nn.Sequential(nn.Linear(self.n_features, hidden), nn.Tanh()).to(self.device, dtype)
        bound = 1.0 / math.sqrt(self.n_features)  # nn.Linear's default init, drawn from our generator
        self._x0 = {
            "0.weight": (torch.rand(hidden, self.n_features, generator=gen, dtype=dtype) * 2 - 1) * bound,
            "0.bias": (torch.rand(hidden, generator=gen, dtype=dtype) * 2 - 1) * bound,
        }

    def initial_x(self) -> dict[str, Tensor]:
        return {k: v.clone().to(self.device) for k, v in self._x0.items()}

    def initial_y(self) -> dict[str, Tensor]:
        return {
            "weight": torch.zeros(self.hidden, self.n_classes, dtype=self.dtype, device=self.device),
            "bias": torch.zeros(self.n_classes, dtype=self.dtype, device=self.device),
        }

    def logits(self, x: Tree, y: Tree, inputs: Tensor) -> Tensor:
        assert isinstance(x, dict) and isinstance(y, dict)
        feats = functional_call(self.features_net, x, (inputs,))
        return feats @ y["weight"] + y["bias"]

    def lower_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        assert isinstance(y, dict)
        inputs, labels = _take(self.train_x, batch), _take(self.train_y, batch)
        return F.cross_entropy(self.logits(x, y, inputs), labels) + self.reg * (y["weight"] ** 2).sum()

    def upper_loss(self, x: Tree, y: Tree, batch: Tensor | None = None) -> Tensor:
        inputs, labels = _take(self.val_x, batch), _take(self.val_y, batch)
        return F.cross_entropy(self.logits(x, y, inputs), labels)
