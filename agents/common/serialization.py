"""Loading a model zip without running code from it.

stable-baselines3 stores what JSON cannot hold (spaces, schedules, tensors, the policy class) as base64
cloudpickles in the zip's ``data`` entry, and its ``load`` unpickles every one of them: a crafted file runs
arbitrary code on load. :func:`safe_custom_objects` reads those entries first with an unpickler that resolves
only an allow-list of globals, the types the project itself saves:

- containers and scalars: ``collections.OrderedDict``/``deque``, ``set``, ``frozenset``, ``slice``, ``complex``,
  ``copyreg._reconstructor`` over allowed classes;
- NumPy arrays, dtypes, scalars and random generators (PCG64, MT19937, Philox, SFC64, SeedSequence);
- torch tensors (their storages read back by ``torch.load(weights_only=True)``), ``torch.Size`` and dtypes;
- Gymnasium spaces; stable-baselines3's schedule classes; policy and rollout-buffer classes (``BasePolicy`` and
  ``BaseBuffer`` subclasses) and :class:`rlopt.agents.hyperparams.LinearDecay` from ``rlopt`` or
  ``stable_baselines3``.

Every decoded entry is handed to stable-baselines3's ``load`` as a ``custom_objects`` value, so it never
unpickles anything itself. An entry that needs any other global (a function pickled by value, an arbitrary
class) is refused with a ``ValueError`` naming the key, the global and the opt-in ``trusted=True``, which
restores stable-baselines3's behaviour for files one trusts. Policy weights (``policy.pth``) are already read
weights-only by stable-baselines3.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "UnsafeCheckpointError",
    "load_vec_normalize",
    "read_model_data",
    "safe_custom_objects",
    "safe_loads",
    "save_vec_normalize",
]

_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("collections", "OrderedDict"), ("collections", "deque"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("builtins", "object"), ("copyreg", "_reconstructor"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"), ("torch", "Size"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("numpy.random.bit_generator", "SeedSequence"), ("numpy.random._generator", "Generator"),
    ("numpy.random.mtrand", "RandomState"),
    ("numpy.random._pcg64", "PCG64"), ("numpy.random._pcg64", "PCG64DXSM"), ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._philox", "Philox"), ("numpy.random._sfc64", "SFC64"),
    ("stable_baselines3.common.utils", "FloatSchedule"), ("stable_baselines3.common.utils", "ConstantSchedule"),
    ("stable_baselines3.common.utils", "LinearSchedule"),
})
_NUMPY_DTYPE_MODULES = ("numpy.dtypes",)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A pickle needs a global outside the allow-list (``self.name`` is ``module.attribute``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"global {name} is not on the allow-list")
        self.name = name


def _storage_from_bytes(data: bytes) -> Any:
    # torch pickles a tensor's storage as the bytes of a torch.save; weights-only reads them without code
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed_class(module: str, name: str) -> Any:
    """The class ``module.name`` if it is a Gymnasium space, an SB3/rlopt policy or buffer class, or rlopt's
    schedule, else None."""
    if not module.startswith(("gymnasium.spaces", "stable_baselines3.", "rlopt.")):
        return None
    obj: Any = importlib.import_module(module)  # a module of one of these packages: importing it runs no file data
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        return None
    import gymnasium as gym
    from stable_baselines3.common.buffers import BaseBuffer
    from stable_baselines3.common.policies import BasePolicy

    from rlopt.agents.hyperparams import LinearDecay

    if module.startswith("gymnasium.spaces") and issubclass(obj, gym.spaces.Space):
        return obj
    if issubclass(obj, (BasePolicy, BaseBuffer)) or obj is LinearDecay:
        return obj
    return None


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in _ALLOWED or module in _NUMPY_DTYPE_MODULES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        found = _allowed_class(module, name)
        if found is not None:
            return found
        raise UnsafeCheckpointError(f"{module}.{name}")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` resolving only allow-listed globals (raises :class:`UnsafeCheckpointError`)."""
    return _AllowListUnpickler(io.BytesIO(data)).load()


def _describe(path: Any) -> str:
    return str(path) if isinstance(path, (str, Path)) else f"<{type(path).__name__}>"


def read_model_data(path: Any) -> dict[str, Any]:
    """The JSON ``data`` entry of a model zip (a path or a binary file object), or a ``ValueError`` naming the
    file when it is not a model zip (not a zip, truncated, no ``data``, not JSON)."""
    where = _describe(path)
    if isinstance(path, (str, Path)):
        path = Path(path)
        if path.suffix != ".zip" and not path.exists() and path.with_suffix(".zip").exists():
            path = path.with_suffix(".zip")  # SB3's save appends .zip
        if not path.is_file():
            raise FileNotFoundError(f"Invalid path: {where} is not a file")
    else:
        path.seek(0)
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                raise ValueError(f"Invalid checkpoint: {where} has no 'data' entry, expected a model zip written "
                                 "by save()")
            text = archive.read("data").decode()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"Invalid checkpoint: {where} is not a complete zip archive ({error}), expected a model "
                         "zip written by save()") from None
    finally:
        if not isinstance(path, Path):
            path.seek(0)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"Invalid checkpoint: the 'data' entry of {where} is not JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"Invalid checkpoint: the 'data' entry of {where} is not a JSON object")
    return data


def safe_custom_objects(
    path: Any,
    loader: str,
    custom_objects: dict[str, Any] | None = None,
    trusted: bool = False,
    expected: str | None = None,
) -> dict[str, Any]:
    """``custom_objects`` for stable-baselines3's ``load`` that leaves it nothing to unpickle.

    Args:
        path: the model zip (a path or a binary file object).
        loader: the loader's name for error messages, e.g. ``"rlopt.agents.PPO.load"``.
        custom_objects: the caller's replacements (kept; those keys are never decoded).
        trusted: leave entries the allow-list refuses to stable-baselines3 (which unpickles them).
        expected: the ``_saved_by`` mark the file must carry if it carries one (e.g. ``"rlopt.agents.PPO"``).

    Raises:
        ValueError: for a file that is not a model zip, a model of another algorithm, or (unless ``trusted``)
            an entry whose unpickling would need a global outside the allow-list.
    """
    data = read_model_data(path)
    where = _describe(path)
    saved_by = data.get("_saved_by")
    if expected is not None and isinstance(saved_by, str) and saved_by != expected:
        raise ValueError(f"Invalid checkpoint: {where} holds a {saved_by} model, expected {expected}")
    out = dict(custom_objects or {})
    for key, item in data.items():
        if key in out or not (isinstance(item, dict) and ":serialized:" in item):
            continue
        try:
            out[key] = safe_loads(base64.b64decode(str(item[":serialized:"]).encode()))
        except UnsafeCheckpointError as error:
            if trusted:
                continue
            raise ValueError(
                f"Refusing to load {where}: data[{key!r}] is a pickle that needs {error.name}, which could run "
                f"code; load the file only if you trust it: {loader}(..., trusted=True) (stable-baselines3's "
                "behaviour), or pass a replacement in custom_objects"
            ) from None
        except (binascii.Error, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError) as error:
            raise ValueError(f"Invalid checkpoint: data[{key!r}] of {where} cannot be read ({error})") from None
    return out


_VEC_NORMALIZE_FIELDS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon", "training")


def save_vec_normalize(venv: Any, path: str | Path) -> None:
    """Write the statistics and settings of an SB3 ``VecNormalize`` as JSON (atomically).

    ``VecNormalize.save`` pickles the whole wrapper, so its ``load`` runs whatever the file holds;
    :func:`load_vec_normalize` reads this file with ``json`` alone. Observation statistics of a ``Dict``
    observation space are not supported.
    """
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    from rlopt._atomic import atomic_write

    def stats(rms: RunningMeanStd) -> dict[str, Any]:
        return {"mean": np.asarray(rms.mean).tolist(), "var": np.asarray(rms.var).tolist(), "count": float(rms.count)}

    if not isinstance(venv.obs_rms, RunningMeanStd):
        raise ValueError("Invalid venv: observation statistics per key (Dict spaces) are not supported")
    record = {"format": "rlopt.VecNormalize/1", **{k: getattr(venv, k) for k in _VEC_NORMALIZE_FIELDS},
              "obs_rms": stats(venv.obs_rms), "ret_rms": stats(venv.ret_rms)}
    with atomic_write(path) as f:
        f.write(json.dumps(record).encode())


def load_vec_normalize(path: str | Path, venv: Any) -> Any:
    """A ``VecNormalize`` around ``venv`` with the statistics and settings :func:`save_vec_normalize` wrote.

    Raises:
        ValueError: naming the file when it is not such a JSON file (e.g. a pickle from ``VecNormalize.save``,
            which is never unpickled here), or when its statistics do not fit ``venv``'s observation space.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    where = str(path)
    raw = Path(path).read_bytes()
    try:
        record = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"Invalid statistics file: {where} is not JSON (a pickle written by VecNormalize.save? "
                         "it is not unpickled here; write the statistics with save_vec_normalize)") from None
    if not isinstance(record, dict) or record.get("format") != "rlopt.VecNormalize/1":
        raise ValueError(f"Invalid statistics file: {where} was not written by save_vec_normalize")
    wrapper = VecNormalize(venv, **{k: record[k] for k in _VEC_NORMALIZE_FIELDS if k != "training"})
    wrapper.training = bool(record["training"])
    for name in ("obs_rms", "ret_rms"):
        rms, saved = getattr(wrapper, name), record[name]
        mean, var = np.asarray(saved["mean"], dtype=np.float64), np.asarray(saved["var"], dtype=np.float64)
        if mean.shape != np.shape(rms.mean):
            raise ValueError(f"Invalid statistics file: {where} has {name} of shape {mean.shape}, the env needs "
                             f"{np.shape(rms.mean)}")
        rms.mean, rms.var, rms.count = mean, var, float(saved["count"])
    return wrapper
