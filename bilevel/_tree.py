"""Small arithmetic on the variables of a bilevel problem: a tensor or a dict of tensors.

A "tree" here is either one floating-point tensor or a flat ``dict[str, Tensor]`` (what
``dict(module.named_parameters())`` gives). ``torch.func`` transforms accept both as they are; these helpers
give the few vector-space operations the linear solvers and step-size rules need, without a dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

Tree = Tensor | dict[str, Tensor]


def check_tree(tree: object, name: str) -> None:
    """Raise a clear error unless ``tree`` is a floating-point tensor or a non-empty dict of them.

    Args:
        tree: the object to check.
        name: the argument name used in error messages.

    Raises:
        TypeError: wrong container or element type, or a non floating-point dtype (no gradient exists).
        ValueError: an empty dict or non-finite values.
    """
    if isinstance(tree, Tensor):
        items: list[tuple[str, object]] = [("", tree)]
    elif isinstance(tree, Mapping):
        if len(tree) == 0:
            raise ValueError(f"{name} is an empty dict; expected at least one tensor")
        items = list(tree.items())
        for key, _ in items:
            if not isinstance(key, str):
                raise TypeError(f"{name} must have str keys, got key {key!r} of type {type(key).__name__}")
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a dict[str, torch.Tensor], got {type(tree).__name__}")
    for key, value in items:
        label = f"{name}[{key!r}]" if key else name
        if not isinstance(value, Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(
                f"{label} has dtype {value.dtype}; it must be floating point to be differentiated "
                "(use float32 or float64)"
            )
        if not bool(torch.isfinite(value.detach()).all()):
            raise ValueError(f"{label} contains non-finite values (nan or inf)")


def leaves(tree: Tree) -> list[Tensor]:
    """The tensors of ``tree`` in a fixed order (dict insertion order)."""
    if isinstance(tree, Tensor):
        return [tree]
    return list(tree.values())


def rebuild(like: Tree, values: list[Tensor]) -> Tree:
    """The tree with the structure of ``like`` holding ``values`` (in ``leaves`` order)."""
    if isinstance(like, Tensor):
        return values[0]
    return dict(zip(like.keys(), values, strict=True))


def tree_map(fn: Callable[..., Tensor], tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leafwise to one or more trees of the same structure."""
    if isinstance(tree, Tensor):
        return fn(tree, *rest)
    return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}  # type: ignore[index]


def same_structure(a: Tree, b: Tree) -> bool:
    """True when ``a`` and ``b`` have the same keys and leaf shapes."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def check_like(tree: object, like: Tree, name: str, like_name: str) -> None:
    """Raise ``ValueError`` unless ``tree`` is a valid tree with the structure and shapes of ``like``."""
    check_tree(tree, name)
    assert isinstance(tree, (Tensor, dict))
    if not same_structure(tree, like):
        raise ValueError(
            f"{name} must have the structure and shapes of {like_name}: got {describe(tree)}, expected {describe(like)}"
        )


def describe(tree: Tree) -> str:
    """A short text of the structure and shapes of a tree, for error messages."""
    if isinstance(tree, Tensor):
        return f"Tensor{tuple(tree.shape)}"
    return "{" + ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in tree.items()) + "}"


def add(a: Tree, b: Tree, alpha: float | Tensor = 1.0) -> Tree:
    """``a + alpha * b``."""
    return tree_map(lambda u, v: u + alpha * v, a, b)


def sub(a: Tree, b: Tree) -> Tree:
    """``a - b``."""
    return tree_map(lambda u, v: u - v, a, b)


def scale(a: Tree, alpha: float | Tensor) -> Tree:
    """``alpha * a``."""
    return tree_map(lambda u: alpha * u, a)


def zeros_like(a: Tree) -> Tree:
    """A tree of zeros shaped like ``a``."""
    return tree_map(torch.zeros_like, a)


def detach(a: Tree) -> Tree:
    """The tree with every leaf detached from any graph."""
    return tree_map(lambda u: u.detach(), a)


def dot(a: Tree, b: Tree) -> Tensor:
    """The Euclidean inner product summed over all leaves (a 0-dim tensor)."""
    terms = [torch.sum(u * v) for u, v in zip(leaves(a), leaves(b), strict=True)]
    return torch.stack(terms).sum()


def norm(a: Tree) -> Tensor:
    """The Euclidean norm over all leaves (a 0-dim tensor)."""
    return torch.sqrt(dot(a, a))


def numel(a: Tree) -> int:
    """The total number of scalars in the tree."""
    return sum(u.numel() for u in leaves(a))


def is_finite(a: Tree) -> bool:
    """True when every leaf is finite."""
    return all(bool(torch.isfinite(u).all()) for u in leaves(a))


def ravel(a: Tree) -> Tensor:
    """All leaves flattened and concatenated into one vector."""
    return torch.cat([u.reshape(-1) for u in leaves(a)])


def unravel(vector: Tensor, like: Tree) -> Tree:
    """The inverse of :func:`ravel`: split ``vector`` into the leaf shapes of ``like``."""
    out: list[Tensor] = []
    start = 0
    for leaf in leaves(like):
        out.append(vector[start : start + leaf.numel()].reshape(leaf.shape))
        start += leaf.numel()
    return rebuild(like, out)
