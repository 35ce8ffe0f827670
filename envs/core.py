"""`TorchVecEnv`: N copies of an environment stepped as one batch of tensor ops on any torch device.

The base class owns everything that is the same for every environment: validation of actions and reset
options, Gymnasium 1.x autoreset semantics (NEXT_STEP, SAME_STEP, DISABLED), time-limit truncation,
episode statistics, seeding and the optional ``torch.compile``d step. A concrete environment supplies
pure array functions: ``_dynamics`` (one physics step) and ``_observe`` (state to observation), written with
the operations of ``rlopt.envs._ops`` so that they run on torch tensors (every device, the compiled kernel)
and on NumPy arrays (small eager CPU batches, ``backend="numpy"``); ``_reset_states`` (uniform noise to
initial states, torch); and its spaces and constants.

Randomness. Initial states are drawn from a counter-based generator: the reset noise of copy ``i`` at its
``e``-th reset is a hash of ``(key, i, e, component)`` (a 32-bit integer mixer, Wellons' "lowbias32"
family, with multipliers below 2**31 so every product fits in int64 on every device), where ``key`` is
drawn from the env's own ``torch.Generator`` when it is seeded. Only the reset counters of copies that
reset advance; nothing is drawn from a stateful generator inside ``step``, so the step has no host
synchronisation, compiles into one fused kernel, and gives the same initial states on CPU and CUDA for the
same seed (integer arithmetic is exact). A copy's initial states depend only on the seed, its index and its
reset count, not on what the other copies do.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rlopt.envs._ops import Array, ops

__all__ = ["AUTORESET_MODES", "BACKENDS", "TorchVecEnv", "declared_autoreset_mode", "parse_autoreset_mode"]

_M32 = 0xFFFFFFFF
# Odd multipliers below 2**31: x < 2**32 times c < 2**31 stays below 2**63, so int64 never overflows.
_MUL1 = 0x7FEB352D
_MUL2 = 0x31848BAB
_GOLDEN = 0x9E3779B9
# Eager reset table (`TorchVecEnv._fresh_states`): rows, and the most state values (k x num_envs) it is used
# for. Measured on CartPole with one thread: 13 % faster at 1024 copies, 11 % slower at 4096.
_FRESH_TABLE_ROWS = 32
_FRESH_TABLE_MAX = 8192
# Smallest batch whose compiled CPU step uses torch's intra-op threads.
_PARALLEL_MIN_ENVS = 65536
# Largest batch an eager CPU env steps with NumPy by default (backend=None). Measured on one thread with random
# actions: NumPy's step is 3-3.5x faster than torch's at 8 copies, 1.4-2.6x at 2048 (by env), 0.7-2.5x at 4096
# (CartPole slower: a NumPy gather of reset states every step).
_NUMPY_MAX_ENVS = 2048
#: the step's array backends (TorchVecEnv(backend=))
BACKENDS = ("torch", "numpy")

AUTORESET_MODES: dict[str, AutoresetMode] = {
    "next_step": AutoresetMode.NEXT_STEP,
    "same_step": AutoresetMode.SAME_STEP,
    "disabled": AutoresetMode.DISABLED,
}


#: render modes of the batched envs (drawn by Gymnasium's env of the same id)
RENDER_MODES = ("rgb_array",)


@functools.cache
def _reference_metadata(env_id: str) -> dict[str, Any]:
    """The metadata of Gymnasium's env class for ``env_id`` (its ``render_fps``), without building one."""
    if not env_id:
        return {"render_fps": None}
    entry = gym.spec(env_id).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    return {"render_fps": None, **getattr(creator, "metadata", {})}


def declared_autoreset_mode(env: VectorEnv) -> AutoresetMode:
    """The autoreset mode a Gymnasium vector env declares in its metadata (next-step, Gymnasium's default,
    when it declares none)."""
    return parse_autoreset_mode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))


def parse_autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """Return the `AutoresetMode` for an enum member or its name ("next_step", "NextStep", ...).

    Raises:
        ValueError: for anything else, naming the allowed values.
    """
    if isinstance(mode, AutoresetMode):
        return mode
    if isinstance(mode, str):
        key = mode.lower().replace("-", "_")
        key = {"nextstep": "next_step", "samestep": "same_step"}.get(key, key)
        if key in AUTORESET_MODES:
            return AUTORESET_MODES[key]
    allowed = ", ".join(repr(m) for m in AUTORESET_MODES)
    raise ValueError(
        f"Invalid autoreset_mode: {mode!r}, expected a gymnasium AutoresetMode or one of {allowed}"
    )


def _choose_backend(
    backend: str | None, device: torch.device, compile: bool, num_envs: int, threads: int | None
) -> str:
    """`TorchVecEnv`'s ``backend`` argument checked, ``None`` resolved."""
    if backend not in (None, *BACKENDS):
        raise ValueError(f"Invalid backend: {backend!r}, expected None or one of {list(BACKENDS)}")
    if backend == "numpy" and (device.type != "cpu" or compile or threads is not None):
        raise ValueError(f"Invalid backend: 'numpy' steps an eager CPU env on one thread, got device={device}, "
                         f"compile={compile}, threads={threads}; use backend='torch' or None")
    if backend is None:
        small = device.type == "cpu" and not compile and threads is None and num_envs <= _NUMPY_MAX_ENVS
        backend = "numpy" if small else "torch"
    return backend


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer mixer on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _M32
    return x ^ (x >> 16)


class TorchVecEnv(VectorEnv):
    """A Gymnasium vector environment whose copies live in tensors on one torch device.

    ``reset(seed=, options=)`` and ``step(actions)`` take and return torch tensors on ``env.device``:
    observations ``(num_envs, *obs_shape)`` float32, rewards ``(num_envs,)`` float32, terminated and
    truncated ``(num_envs,)`` bool. ``step`` is a fixed sequence of tensor ops: no Python loop over
    copies, no host synchronisation, no data-dependent Python branch.

    Autoreset follows Gymnasium 1.x (``metadata["autoreset_mode"]``):

    * ``NEXT_STEP`` (default): the step on which a copy ends returns its final observation; on the next
      step that copy is reset, its action ignored, and it returns the reset observation with reward 0
      and terminated = truncated = False.
    * ``SAME_STEP``: a copy that ends is reset in the same step; the returned observation is the reset
      one and the final one is in ``info["final_obs"]`` (rows where ``info["_final_obs"]`` is True),
      ``info["final_info"]`` is ``{}`` with mask ``info["_final_info"]``, as ``SyncVectorEnv`` gives.
    * ``DISABLED``: no autoreset; reset ended copies with ``reset(options={"reset_mask": mask})``.

    Time limits set ``truncated`` (``elapsed >= max_episode_steps``), never ``terminated``.

    On CPU, an eager batch of at most 2048 copies steps in NumPy by default (``backend``): at a few copies a
    step's cost is the fixed cost of its array operations, about a fifth of torch's in NumPy, so the five
    envs step 3-3.5x faster at 8 copies (CartPole faster than Gymnasium's in SB3's ``DummyVecEnv``), and
    1.4-2.6x at 2048. Inputs and outputs
    are torch tensors either way, sharing memory with the NumPy arrays (no copies).

    On CPU, batches below 65536 copies step on one thread (torch's intra-op thread count is set to 1
    for the step and restored after it; the compiled kernel is built single-threaded): the work is too
    small to split, and a thread team stalls whenever another process holds a core.

    Info. As Gymnasium's vector envs, a step's info holds a key only when it applies to some copy, with a
    mask ``info["_key"]`` telling which: ``final_obs``/``final_info`` (SAME_STEP) and the env's own episode
    statistics ``info["episode_stats"] = {"r": return, "l": length}`` (tensors of shape ``(num_envs,)``,
    float32 and int32, valid where ``info["_episode_stats"]`` = terminated | truncated is True; the return
    and length include the step that ended the episode) appear on the steps where a copy ended, and the
    info is ``{}`` on the others. The statistics have their own key so that Gymnasium's
    ``RecordEpisodeStatistics`` can still add ``"episode"`` (with wall-clock time, which is not tracked on
    device). Deciding whether a copy ended reads one flag from the device, so on accelerators the keys
    are in every step's info instead (``dense_info=True``), the masks telling where they are valid.

    Args:
        num_envs: number of copies, >= 1.
        device: torch device of every tensor.
        seed: seed of the env's ``torch.Generator``; ``None`` seeds it from OS entropy.
        autoreset_mode: an ``AutoresetMode`` or "next_step", "same_step", "disabled".
        max_episode_steps: time limit (``None``: the environment's registered default).
        dtype: floating dtype of the physical state, ``torch.float32``/``torch.float64`` or their names
            "float32"/"float64" (as config files give them); ``None``: the environment's default, which is the
            precision Gymnasium's class computes in.
        compile: compile the step with TorchInductor into one fused kernel (traced once at construction,
            which takes seconds); ``False`` keeps the eager path, the reference for debugging. Both
            update the state buffers in place and draw no random numbers from a stateful generator.
        validate_actions: check that discrete actions are in range (raises ``ValueError``); reading the
            check's result is a host synchronisation on accelerators, so the default is True on CPU and
            False elsewhere. Shape, dtype and device are always checked (metadata only).
        dense_info: put the masked info keys in every step's info (masks all False where no copy ended)
            instead of only in the steps where a copy ended. ``None``: False on CPU (Gymnasium's form), True
            elsewhere (no host synchronisation per step).
        threads: intra-op CPU threads of the step (the compiled kernel's OpenMP team, or ATen's pool for
            the eager step), set for the duration of each step. ``None``: one thread below 65536 copies,
            torch's setting from there on. A step over a few thousand copies is tens to hundreds of
            microseconds of work: more threads speed it up on an idle machine, but when another process
            holds a core their barrier waits for a descheduled thread, hence the conservative default.
            Ignored on other devices.
        backend: the arrays an eager step computes with: ``"torch"``, or ``"numpy"`` (CPU only, not
            compiled): the same operations on NumPy views of the state buffers, whose per-call cost on a few
            values is about a fifth of torch's, so a small batch steps several times faster (CartPole at 8
            copies: see ``benchmarks/bench_sb3_adapter.py``). Inputs and outputs stay torch tensors. The
            values agree with the torch step's up to an ulp of the sines and cosines (NumPy's and torch's
            implementations may round differently), so trajectories of chaotic envs part after many steps.
            ``None``: NumPy for eager CPU batches of at most 2048 copies without ``threads``, torch otherwise.

    Example:
        >>> import torch
        >>> from rlopt import envs
        >>> env = envs.make("CartPole-v1", num_envs=8, seed=0)
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(torch.ones(8, dtype=torch.long))
        >>> obs.shape, reward.dtype, terminated.dtype
        (torch.Size([8, 4]), torch.float32, torch.bool)
    """

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    # Filled in by each environment.
    env_id: ClassVar[str] = ""
    state_names: ClassVar[tuple[str, ...]] = ()
    default_max_episode_steps: ClassVar[int] = 0
    default_dtype: ClassVar[torch.dtype] = torch.float64
    single_observation_space: gym.spaces.Box
    single_action_space: gym.spaces.Space[Any]

    def __init__(
        self,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        max_episode_steps: int | None = None,
        dtype: torch.dtype | str | None = None,
        compile: bool = False,
        validate_actions: bool | None = None,
        threads: int | None = None,
        dense_info: bool | None = None,
        render_mode: str | None = None,
        backend: str | None = None,
    ) -> None:
        if render_mode not in (None, *RENDER_MODES):
            raise ValueError(f"Invalid render_mode: {render_mode!r}, expected None or one of {list(RENDER_MODES)}")
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"Invalid num_envs: {num_envs!r}, expected an int >= 1")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"Invalid threads: {threads!r}, expected None or an int >= 1")
        if max_episode_steps is None:
            max_episode_steps = self.default_max_episode_steps
        if (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ValueError(f"Invalid max_episode_steps: {max_episode_steps!r}, expected an int >= 1")
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype.removeprefix("torch."), dtype)
        dtype = self.default_dtype if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"Invalid dtype: {dtype!r}, expected torch.float32, torch.float64, 'float32' or 'float64'"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"Invalid seed: {seed!r}, expected an int or None")
        self.device = torch.device(device)
        self.backend = backend = _choose_backend(backend, self.device, compile, num_envs, threads)
        self.num_envs = num_envs
        self.dtype = dtype
        self.max_episode_steps = max_episode_steps
        self.autoreset_mode = parse_autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode,
                         "render_modes": list(RENDER_MODES),
                         "render_fps": _reference_metadata(self.env_id)["render_fps"]}
        self.validate_actions = self.device.type == "cpu" if validate_actions is None else validate_actions
        self.dense_info = self.device.type != "cpu" if dense_info is None else bool(dense_info)
        # each env its own spaces: the class-level ones are shared, and a caller writing into one env's bounds
        # (a policy's buffers loaded in place, say) must not change every later env of the class
        self.single_observation_space = copy.deepcopy(type(self).single_observation_space)
        self.single_action_space = copy.deepcopy(type(self).single_action_space)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = render_mode
        self._renderer: Any = None  # Gymnasium's env of the same id, drawing one copy's state at a time
        self._last_actions: torch.Tensor | None = None  # kept for drawing when render_mode is set
        space = self.single_action_space
        self._action_shape = torch.Size((num_envs, *(space.shape or ())))
        self._action_range: tuple[int, int] | None = None
        # The dtype the step computes with (and the compiled step is specialised to).
        self._action_dtype = torch.float32
        if isinstance(space, gym.spaces.Discrete):
            self._action_range = (int(space.start), int(space.start + space.n) - 1)
            self._action_dtype = torch.int64
        self.compiled = compile

        n, k, dev = num_envs, len(self.state_names), self.device
        self.generator = torch.Generator(device=dev)
        # Struct-of-arrays layout (k, num_envs): every op runs over contiguous rows of length num_envs,
        # which is what a fused kernel vectorises; `state` shows Gymnasium's (num_envs, k) layout.
        self._state = torch.zeros(k, n, dtype=dtype, device=dev)
        self._elapsed = torch.zeros(n, dtype=torch.int32, device=dev)
        # NEXT_STEP: copies that ended on the previous step and are reset on this one.
        # Flags cross the compiled kernel as uint8 (viewed as bool outside): inductor's CPU code stores and
        # loads bool arrays element by element but uint8 ones as vectors.
        self._prev_done = torch.zeros(n, dtype=torch.uint8, device=dev)
        self._episode_return = torch.zeros(n, dtype=torch.float32, device=dev)
        self._episode_length = torch.zeros(n, dtype=torch.int32, device=dev)
        self._lane_key = torch.zeros(n, dtype=torch.int64, device=dev)
        self._reset_count = torch.zeros(n, dtype=torch.int64, device=dev)
        self._lane_index = torch.arange(n, dtype=torch.int64, device=dev)
        self._component_offset = (torch.arange(k, dtype=torch.int64, device=dev) * _GOLDEN) & _M32
        self._needs_reset = True
        # Threads of the CPU step: None leaves torch's setting alone.
        self._threads: int | None = None
        if self.device.type == "cpu":
            self._threads = threads if threads is not None else (1 if num_envs < _PARALLEL_MIN_ENVS else None)
        # Eager, small batches: initial states of the next `_fresh_rows` resets of every copy (see
        # `_fresh_states`); 0 (no table) above _FRESH_TABLE_MAX state values, where the hash's elementwise
        # cost outweighs its per-op overhead and the table's gather only adds work, and with a compiled step,
        # which computes the states inline and advances the reset counts without the table knowing.
        # The NumPy step always uses the table (the hash is computed in torch).
        self._fresh_rows = _FRESH_TABLE_ROWS if (k * n <= _FRESH_TABLE_MAX or backend == "numpy") and not compile else 0
        self._fresh_table: torch.Tensor | None = None
        self._fresh_table_array: np.ndarray | None = None  # its NumPy view, for the NumPy step
        self._fresh_base = torch.zeros(n, dtype=torch.int64, device=dev)
        self._fresh_age = 0
        self._tracing = False
        self._transition: Callable[..., tuple[torch.Tensor, ...]] = self._transition_eager
        if compile:
            self._transition = self._compile_transition()
        # The NumPy step's views of the buffers (they share the tensors' memory), and of the lane indices and the
        # reset counts the reset table starts from (its lookup, see `_fresh_states`).
        self._arrays: tuple[np.ndarray, ...] | None = None
        if backend == "numpy":
            self._threads = None  # no intra-op threads to hold back
            self._arrays = tuple(t.numpy() for t in self._buffers())
            self._lane_index_array, self._fresh_base_array = self._lane_index.numpy(), self._fresh_base.numpy()
        self._set_seed(seed)

    # ------------------------------------------------------------------ environment-specific (pure)
    def _dynamics(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        """One physics step of every copy, state ``(k, num_envs)``: returns (next_state, reward, terminated).

        ``reward`` is float32 and ``terminated`` bool, both of shape ``(num_envs,)``. Written with the
        operations of ``xp = ops(state)`` (see ``rlopt.envs._ops``), so that it runs on torch tensors and on
        NumPy arrays alike.
        """
        raise NotImplementedError

    def _observe(self, state: Array) -> Array:
        """Observation (float32, ``(num_envs, *obs_shape)``, a new array) of states ``(k, num_envs)``.

        Default: the state itself, one float32 column per state variable (CartPole, MountainCar).
        """
        if self._tracing:
            # Stacking the rows lets the compiled kernel write observations in its main loop.
            return torch.stack([row.to(torch.float32) for row in state.unbind(0)], dim=1)
        # Eager, one transposing copy instead of six ops (same values); a copy even where the state is
        # float32 already, so that an observation never shares the state buffer's memory.
        xp = ops(state)
        return xp.rows_as_columns(state, xp.float32)

    def _reset_states(self, uniform: torch.Tensor) -> torch.Tensor:
        """Initial states ``(k, num_envs)`` from noise ``uniform`` in (0, 1) of the same shape and dtype
        (torch tensors only: the reset noise is hashed in torch, see `_fresh_states`)."""
        raise NotImplementedError

    def _action_checked(self, actions: torch.Tensor) -> torch.Tensor:
        """Environment-specific action validation (range of discrete actions); returns the action."""
        return actions

    # ------------------------------------------------------------------ seeding and noise
    def _set_seed(self, seed: int | None) -> None:
        """Reseed the env's generator and derive the per-copy keys of the reset noise."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        key = torch.randint(0, 2**32, (), generator=self.generator, device=self.device, dtype=torch.int64)
        self._lane_key.copy_(_mix32((key + _mix32(self._lane_index)) & _M32))
        self._reset_count.zero_()
        self._fresh_table = None

    def _uniform(self, lane_key: torch.Tensor, reset_count: torch.Tensor) -> torch.Tensor:
        """Noise in (0, 1) for resets number ``reset_count`` of every copy, shape ``(k, *reset_count.shape)``
        (``reset_count`` is ``(num_envs,)`` or ``(rows, num_envs)``), in the state dtype."""
        lane = _mix32(lane_key ^ (reset_count & _M32))
        offset = self._component_offset.view(-1, *([1] * lane.dim()))
        bits = _mix32((lane.unsqueeze(0) + offset) & _M32)
        return ((bits.to(torch.float64) + 0.5) * (1.0 / 2**32)).to(self.dtype)

    def _fresh_states(self, lane_key: Array, reset_count: Array) -> Array:
        """Initial states ``(k, num_envs)`` for every copy's next reset: ``_reset_states(_uniform(...))``.

        Traced for compilation this is computed inline (the fused kernel pays per element, not per op), and
        so it is for large eager batches. For small eager batches the hash's 20-odd tensor ops are mostly
        per-op overhead, a fifth of a 128-copy CartPole step, so the states of the next ``rows`` resets of
        every copy are computed together and looked up with one gather. A copy resets at most once per
        call of this method (one per step or per ``reset``), so a table built ``rows`` calls ago still
        covers every copy; it is rebuilt then, and on reseeding. The values are those of the inline
        formula, bit for bit. The NumPy path (arrays in, an array out) always uses the table, built in torch.
        """
        if self._tracing or self._fresh_rows == 0:
            return self._reset_states(self._uniform(lane_key, reset_count))
        on_numpy = isinstance(reset_count, np.ndarray)
        counts = torch.from_numpy(reset_count) if on_numpy else reset_count
        rows, n = self._fresh_rows, self.num_envs
        if self._fresh_table is None or self._fresh_age >= rows:
            keys = torch.from_numpy(lane_key) if on_numpy else lane_key
            offsets = torch.arange(rows, dtype=torch.int64, device=self.device).unsqueeze(1)
            uniform = self._uniform(keys, counts.unsqueeze(0) + offsets)  # (k, rows, n)
            k = uniform.shape[0]
            self._fresh_table = self._reset_states(uniform.reshape(k, rows * n)).reshape(k, rows, n)
            self._fresh_table_array = None
            self._fresh_base.copy_(counts)
            self._fresh_age = 0
        self._fresh_age += 1
        table = self._fresh_table
        if on_numpy:
            if self._fresh_table_array is None:
                self._fresh_table_array = table.numpy()
            return self._fresh_table_array[:, reset_count - self._fresh_base_array, self._lane_index_array]
        index = (counts - self._fresh_base).view(1, 1, n).expand(table.shape[0], 1, n)
        return table.gather(1, index).squeeze(1)

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        """The per-copy buffers `_transition_eager` reads and updates, in its argument order."""
        return (
            self._state,
            self._elapsed,
            self._prev_done,
            self._episode_return,
            self._episode_length,
            self._lane_key,
            self._reset_count,
        )

    # ------------------------------------------------------------------ the step, as one function of tensors
    def _transition_eager(
        self,
        actions: Array,
        state: Array,
        elapsed_steps: Array,
        prev_done: Array,
        return_so_far: Array,
        length_so_far: Array,
        lane_key: Array,
        reset_count: Array,
    ) -> tuple[Array, ...]:
        """Advance every copy once, updating the buffers (see `_buffers`) in place.

        A function of its array arguments only (the autoreset mode and the physics constants are fixed per
        env), so it can be traced and compiled into one kernel. The arguments are all torch tensors or all
        NumPy arrays (the small-batch CPU path, see `TorchVecEnv`): the same operations either way, except
        that on NumPy arrays the reset states are only looked up on a step where some copy resets (a branch
        on values costs nothing in host memory).

        Returns (obs, reward, terminated, truncated, done, final_obs, episode_return, episode_length),
        the three flags as bool (uint8 when traced for compilation, see `_flag`); the episode statistics
        are those of the episodes that end now (masked by done = terminated | truncated).
        """
        xp = ops(state)
        mode = self.autoreset_mode
        next_state, reward, terminated = self._dynamics(state, actions)
        elapsed = elapsed_steps + 1
        if mode == AutoresetMode.NEXT_STEP:
            # Copies that ended last step are reset now: their action is ignored, reward 0, flags False.
            resetting = prev_done != 0
            if not xp.host or resetting.any():
                fresh = self._fresh_states(lane_key, reset_count)
                next_state = xp.where(resetting[None], fresh, next_state)
                xp.add_(reset_count, xp.astype(resetting, xp.int64))
            reward = xp.masked_fill(reward, resetting, 0.0)
            terminated = terminated & ~resetting
            elapsed = xp.masked_fill(elapsed, resetting, 0)
            truncated = (elapsed >= self.max_episode_steps) & ~resetting
            episode_return = xp.masked_fill(return_so_far + reward, resetting, 0.0)
            episode_length = xp.masked_fill(length_so_far + 1, resetting, 0)
            done = terminated | truncated
            xp.assign(prev_done, self._flag(done))
            obs = self._observe(next_state)
            final_obs = obs
        elif mode == AutoresetMode.SAME_STEP:
            truncated = elapsed >= self.max_episode_steps
            done = terminated | truncated
            episode_return = return_so_far + reward
            episode_length = length_so_far + 1
            final_obs = self._observe(next_state)
            resets = not xp.host or bool(done.any())
            if resets:
                fresh = self._fresh_states(lane_key, reset_count)
                next_state = xp.where(done[None], fresh, next_state)
                xp.add_(reset_count, xp.astype(done, xp.int64))
                elapsed = xp.masked_fill(elapsed, done, 0)
                obs = xp.where(done[:, None], self._observe(next_state), final_obs)
            else:
                obs = final_obs
        else:
            truncated = elapsed >= self.max_episode_steps
            done = terminated | truncated
            episode_return = return_so_far + reward
            episode_length = length_so_far + 1
            obs = self._observe(next_state)
            final_obs = obs
        xp.assign(state, next_state)
        xp.assign(elapsed_steps, elapsed)
        if mode == AutoresetMode.SAME_STEP and resets:
            # The next episode starts from zero; the finished one is reported through the return values
            # (without a reset, on the NumPy path, the statistics carry on as in the other modes).
            xp.assign(return_so_far, xp.masked_fill(episode_return, done, 0.0))
            xp.assign(length_so_far, xp.masked_fill(episode_length, done, 0))
        else:
            xp.assign(return_so_far, episode_return)
            xp.assign(length_so_far, episode_length)
        flags = (self._flag(terminated), self._flag(truncated), self._flag(done))
        return obs, reward, *flags, final_obs, episode_return, episode_length

    def _flag(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` (bool) in the form in which flags leave the transition: uint8 0/1 when traced, else as is.

        Traced for compilation it goes through a float blend: inductor's CPU code converts a comparison
        mask to uint8 one element at a time, which took about a quarter of CartPole's fused kernel, but
        converts floats to uint8 as vectors. Eager, the bool mask leaves as it is (`_step` views uint8 flags
        as bool, and a uint8 buffer copies a bool mask as 0/1). Same values either way.
        """
        if self._tracing:
            return torch.where(mask, 1.0, 0.0).to(torch.uint8)
        return mask

    def _compile_transition(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """Trace `_transition_eager` for this env's shapes and dtypes and compile it with TorchInductor.

        The graph is captured with ``make_fx`` and compiled with ``torch._inductor.compile`` rather than
        ``torch.compile``: there is nothing to guard (shapes, dtypes and devices are fixed by the env and
        checked in `step`), and skipping Dynamo's guards and wrappers removes most of the per-call
        Python overhead, which dominates at small and medium num_envs.
        """
        from torch.fx.experimental.proxy_tensor import make_fx

        example = torch.zeros(self._action_shape, dtype=self._action_dtype, device=self.device)
        # Trace on copies so that tracing leaves the live buffers untouched.
        buffers = [b.clone() for b in self._buffers()]

        def transition(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self._transition_eager(*args)

        self._tracing = True
        try:
            graph = make_fx(transition)(example, *buffers)
        finally:
            self._tracing = False
        # The kernel's OpenMP team is fixed at compile time (-1: torch's thread count when it runs).
        threads = -1 if self._threads is None else self._threads
        with torch._inductor.config.patch({"cpp.threads": threads}):
            return torch._inductor.compile(graph, [example, *buffers])

    # ------------------------------------------------------------------ public API
    @property
    def state(self) -> torch.Tensor:
        """A copy of the physical state, ``(num_envs, k)``, in Gymnasium's ``unwrapped.state`` layout.

        Writable (``env.state = states``) to start copies from chosen states; with NEXT_STEP autoreset, a
        copy that ended on the last step is still reset on the next one.
        """
        return self._state.T.contiguous()

    @state.setter
    def state(self, value: torch.Tensor | np.ndarray) -> None:
        value = torch.as_tensor(value)
        expected = (self.num_envs, len(self.state_names))
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{self.env_id}: invalid state shape {tuple(value.shape)}, expected {expected} "
                f"(columns {', '.join(self.state_names)})"
            )
        if not value.is_floating_point():
            raise TypeError(f"{self.env_id}: invalid state dtype {value.dtype}, expected a floating dtype")
        self._state.copy_(value.to(device=self.device, dtype=self.dtype).T)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reset all copies (or those in ``options["reset_mask"]``); returns (obs, info={}).

        Args:
            seed: reseed the env's generator first (same seed, same initial states); also ``np_random_seed``.
                A list is accepted in Gymnasium's form for an int seed, ``[s, s + 1, ..., s + num_envs - 1]``:
                every copy draws from one counter-based stream, so other per-copy seeds cannot be honoured.
            options: ``{"reset_mask": mask}`` with a bool tensor (or numpy array) of shape ``(num_envs,)``
                with at least one True value resets only those copies. Other keys are refused.
        """
        seed = self._check_seed(seed)
        if options is not None:
            unknown = sorted(set(options) - {"reset_mask"})
            if unknown:
                raise ValueError(f"{self.env_id}: invalid reset options {unknown}, expected only 'reset_mask' (the "
                                 "batched env does not take the 'low'/'high' initial-state ranges of Gymnasium's "
                                 "classic-control reset: its copies start from the task's default range)")
        mask = self._reset_mask(options)
        if seed is not None:
            self._set_seed(seed)
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        self._reset(mask)
        self._needs_reset = False
        return self._observe(self._state), {}

    def _check_seed(self, seed: Any) -> int | None:
        if isinstance(seed, (list, tuple)):
            if (len(seed) == self.num_envs and all(isinstance(x, int) and not isinstance(x, bool) for x in seed)
                    and list(seed) == list(range(seed[0], seed[0] + self.num_envs))):
                return int(seed[0])
            raise ValueError(f"{self.env_id}: invalid seed list {list(seed)[:4]}..., expected [s, s + 1, ..., "
                             f"s + {self.num_envs - 1}] (the copies share one counter-based stream) or an int")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"{self.env_id}: invalid seed {seed!r}, expected an int or None")
        return seed

    def _set_autoreset_mode(self, mode: AutoresetMode | str) -> None:
        """Switch the autoreset mode (``SB3VecEnv`` turns a NEXT_STEP env into the SAME_STEP one SB3 needs).

        The mode is part of the step function, so a compiled step is traced and compiled again; every copy
        must be reset before the next step.
        """
        mode = parse_autoreset_mode(mode)
        if mode == self.autoreset_mode:
            return
        self.autoreset_mode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self._prev_done.zero_()
        self._needs_reset = True
        if self.compiled:
            self._transition = self._compile_transition()

    # Gymnasium's VectorEnv attribute API: one batched env stands for every copy
    def get_attr(self, name: str) -> tuple[Any, ...]:
        """``getattr(self, name)`` once per copy (the copies share the batched env's attributes)."""
        return (getattr(self, name),) * self.num_envs

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """The batched env's method ``name`` called once, its result once per copy (an attribute's value
        when ``name`` is not callable)."""
        attr = getattr(self, name)
        result = attr(*args, **kwargs) if callable(attr) else attr
        return (result,) * self.num_envs

    def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` on the batched env: one value, or one per copy that are all equal."""
        if isinstance(values, (list, tuple)):
            if len(values) != self.num_envs or any(v != values[0] for v in values):
                raise ValueError(f"{self.env_id}: set_attr({name!r}) needs one value for all {self.num_envs} copies "
                                 "(they share the batched env's attributes)")
            values = values[0]
        setattr(self, name, values)

    def _reset_mask(self, options: dict[str, Any] | None) -> torch.Tensor | None:
        if options is None or "reset_mask" not in options:
            return None
        mask = options["reset_mask"]
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(mask).to(self.device)
        if not isinstance(mask, torch.Tensor):
            raise TypeError(
                f"{self.env_id}: options['reset_mask'] must be a bool tensor, got {type(mask).__name__}"
            )
        if tuple(mask.shape) != (self.num_envs,):
            raise ValueError(
                f"{self.env_id}: options['reset_mask'] must have shape ({self.num_envs},), "
                f"got {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(
                f"{self.env_id}: options['reset_mask'] must have dtype torch.bool, got {mask.dtype}"
            )
        if mask.device != self.device:
            raise ValueError(
                f"{self.env_id}: options['reset_mask'] must be on {self.device}, got {mask.device}"
            )
        if self.device.type == "cpu" and not bool(mask.any()):
            # Gymnasium refuses an all-False mask; checked where it costs no device synchronisation.
            raise ValueError(f"{self.env_id}: options['reset_mask'] must contain at least one True value")
        return mask

    def _reset(self, mask: torch.Tensor | None) -> None:
        """Draw initial states for the copies in ``mask`` (all if None) and clear their bookkeeping."""
        fresh = self._fresh_states(self._lane_key, self._reset_count)
        if mask is None:
            self._state.copy_(fresh)
            self._reset_count.add_(1)
            self._elapsed.zero_()
            self._prev_done.zero_()
            self._episode_return.zero_()
            self._episode_length.zero_()
            return
        self._state.copy_(torch.where(mask.unsqueeze(0), fresh, self._state))
        self._reset_count.add_(mask.to(torch.int64))
        self._elapsed.masked_fill_(mask, 0)
        self._prev_done.masked_fill_(mask, 0)
        self._episode_return.masked_fill_(mask, 0.0)
        self._episode_length.masked_fill_(mask, 0)

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step every copy with ``actions``; returns (obs, reward, terminated, truncated, info)."""
        if self._needs_reset:
            raise RuntimeError(f"{self.env_id}: call reset() before step()")
        actions = self._check_actions(actions)
        if self.render_mode is not None:
            self._last_actions = actions
        threads = torch.get_num_threads()
        if self._threads is not None and self._threads != threads:
            # By default small batches run on one thread: ATen splits even 4096 sines across the intra-op
            # pool, whose barrier stalls for milliseconds whenever another process holds a core.
            torch.set_num_threads(self._threads)
            try:
                return self._step(actions)
            finally:
                torch.set_num_threads(threads)
        return self._step(actions)

    def _step(
        self, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Step checked actions: one call of the (eager or compiled) transition, then the info dict."""
        if self._arrays is not None:  # the NumPy step, torch tensors at the boundary (no copies)
            with np.errstate(all="ignore"):  # an overflowing state gives inf/nan silently, as torch's step
                out = self._transition_eager(actions.numpy(), *self._arrays)
            ended = bool(out[4].any())
            if not self.dense_info and not ended:
                return torch.from_numpy(out[0]), torch.from_numpy(out[1]), torch.from_numpy(out[2]), \
                    torch.from_numpy(out[3]), {}
            obs, reward, terminated, truncated, done, final_obs, ep_return, ep_length = map(torch.from_numpy, out)
        else:
            obs, reward, terminated, truncated, done, final_obs, ep_return, ep_length = self._transition(
                actions, *self._buffers()
            )
            if terminated.dtype != torch.bool:  # the compiled kernel's uint8 flags
                terminated, truncated, done = (
                    terminated.view(torch.bool),
                    truncated.view(torch.bool),
                    done.view(torch.bool),
                )
            ended = self.dense_info or bool(done.any())
        if not self.dense_info and not ended:
            return obs, reward, terminated, truncated, {}
        info: dict[str, Any] = {"episode_stats": {"r": ep_return, "l": ep_length}, "_episode_stats": done}
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            info["final_obs"] = final_obs
            info["_final_obs"] = done
            info["final_info"] = {}
            info["_final_info"] = done
        return obs, reward, terminated, truncated, info

    def _check_actions(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(actions, np.ndarray):
            actions = torch.from_numpy(actions).to(self.device)
        if not isinstance(actions, torch.Tensor):
            raise TypeError(
                f"{self.env_id}: actions must be a torch.Tensor on {self.device}, "
                f"got {type(actions).__name__}"
            )
        if actions.shape != self._action_shape:
            raise ValueError(
                f"{self.env_id}: actions must have shape {tuple(self._action_shape)}, "
                f"got {tuple(actions.shape)}"
            )
        if actions.device != self.device:
            raise ValueError(f"{self.env_id}: actions must be on {self.device}, got {actions.device}")
        if self._action_range is not None:
            if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
                raise TypeError(
                    f"{self.env_id}: discrete actions must have an integer dtype, got {actions.dtype}"
                )
        elif not actions.is_floating_point():
            raise TypeError(
                f"{self.env_id}: continuous actions must have a floating dtype, got {actions.dtype}"
            )
        actions = actions.to(self._action_dtype).contiguous()
        if self._action_range is not None and self.validate_actions:
            first, last = self._action_range
            if self._arrays is not None:  # a CPU tensor: one NumPy reduction costs less on a few values
                # (as uint64, a value below `first` wraps around to above the range)
                values = actions.numpy()
                outside = int((values - first if first else values).view(np.uint64).max()) > last - first
            else:
                low, high = (int(v) for v in torch.aminmax(actions))
                outside = low < first or high > last
            if outside:
                low, high = (int(v) for v in torch.aminmax(actions))
                raise ValueError(
                    f"{self.env_id}: actions must lie in [{first}, {last}], got values in [{low}, {high}]"
                )
        return actions

    def render(self) -> tuple[np.ndarray, ...] | None:
        """With ``render_mode="rgb_array"``: one RGB frame ``(H, W, 3)`` uint8 per copy, as Gymnasium's vector
        envs return them, drawn by Gymnasium's own env of the same id from each copy's state (and, for
        Pendulum, its last torque). ``None`` without a render mode (Gymnasium warns then too).
        """
        if self.render_mode is None:
            gym.logger.warn(f"{self.env_id}: render() was called without a render_mode; build the env with "
                            f"render_mode='rgb_array'")
            return None
        if self._renderer is None:
            self._renderer = gym.make(self.env_id, render_mode=self.render_mode).unwrapped
        states = self.state.to("cpu", torch.float64).numpy()
        actions = None if self._last_actions is None else self._last_actions.to("cpu", torch.float64).numpy()
        frames = []
        for i in range(self.num_envs):
            self._renderer.state = states[i].copy()
            self._prepare_renderer(self._renderer, None if actions is None else actions[i])
            frames.append(self._renderer.render())
        return tuple(frames)

    def _prepare_renderer(self, renderer: Any, action: np.ndarray | None) -> None:
        """Set what Gymnasium's renderer draws beyond ``state`` (Pendulum: the last torque)."""

    def close_extras(self, **kwargs: Any) -> None:
        """Close the renderer, if one was opened (the copies themselves are tensors)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    @property
    def observation_dtype(self) -> torch.dtype:
        """Torch dtype of observations (float32, as Gymnasium's spaces)."""
        return torch.float32

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id}, num_envs={self.num_envs}, device={self.device})"


def angle_normalize(x: Array) -> Array:
    """((x + pi) mod 2pi) - pi, Pendulum's angle normalisation (floored modulo, as numpy's %)."""
    return ops(x).remainder(x + math.pi, 2 * math.pi) - math.pi
