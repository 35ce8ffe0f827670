"""The five classic-control environments of Gymnasium as tensor-batched `TorchVecEnv`s.

Each class reproduces Gymnasium's (``gymnasium/envs/classic_control``) constants, integrator, reward,
termination, reset distribution, spaces and registered time limit. The order of floating-point operations
follows Gymnasium's source, so in float64 a step agrees with Gymnasium's to a few ulps; where Gymnasium
mixes float32 and float64 (Pendulum's torque, MountainCarContinuous's float32 state) the same precision is
used. References: Barto, Sutton & Anderson (1983) for CartPole; Sutton (1996) / Sutton & Barto (1998) for
Acrobot (the "book" dynamics); Moore (1990) for MountainCar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlopt.envs._ops import Array, ops
from rlopt.envs.core import TorchVecEnv, angle_normalize

__all__ = ["AcrobotEnv", "CartPoleEnv", "MountainCarContinuousEnv", "MountainCarEnv", "PendulumEnv"]


class CartPoleEnv(TorchVecEnv):
    """CartPole-v1: balance a pole on a cart (Barto, Sutton & Anderson, 1983), Gymnasium's dynamics.

    State ``[x, x_dot, theta, theta_dot]``; action 0 pushes left, 1 right with force 10; explicit Euler
    with tau = 0.02::

        temp = (F + m_p l theta_dot^2 sin theta) / M
        theta_acc = (g sin theta - cos theta temp) / (l (4/3 - m_p cos^2 theta / M))
        x_acc = temp - m_p l theta_acc cos theta / M

    Reward 1 per step (the terminating one included); terminated when ``|x| > 2.4`` or
    ``|theta| > 12 deg``; truncated after 500 steps; reset state uniform in [-0.05, 0.05]^4.

    Example:
        >>> import torch
        >>> from rlopt import envs
        >>> env = envs.make("CartPole-v1", num_envs=4, seed=1)
        >>> obs, _ = env.reset()
        >>> obs, reward, terminated, truncated, info = env.step(torch.zeros(4, dtype=torch.long))
        >>> reward.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    env_id = "CartPole-v1"
    state_names = ("x", "x_dot", "theta", "theta_dot")
    default_max_episode_steps = 500
    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    _high = np.array([x_threshold * 2, np.inf, theta_threshold_radians * 2, np.inf], dtype=np.float32)
    single_observation_space = gym.spaces.Box(-_high, _high, dtype=np.float32)
    single_action_space = gym.spaces.Discrete(2)

    def _dynamics(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        xp = ops(state)
        _, x_dot, theta, theta_dot = state
        force = xp.astype(action * 2 - 1, state.dtype) * self.force_mag
        costheta = xp.cos(theta)
        sintheta = xp.sin(theta)
        temp = (force + self.polemass_length * xp.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * xp.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        # Explicit Euler: positions advance with the old velocities (state + tau * rate, row by row, are
        # Gymnasium's x + tau * x_dot, ..., in three ops instead of nine).
        next_state = state + self.tau * xp.stack((x_dot, xacc, theta_dot, thetaacc))
        nx, ntheta = next_state[0], next_state[2]
        # |x| > t is Gymnasium's x < -t or x > t (NaN compares False either way), in two fewer ops
        terminated = (abs(nx) > self.x_threshold) | (abs(ntheta) > self.theta_threshold_radians)
        reward = xp.ones_like(nx, dtype=xp.float32)
        return next_state, reward, terminated

    def _reset_states(self, uniform: torch.Tensor) -> torch.Tensor:
        return -0.05 + (0.05 - -0.05) * uniform


class AcrobotEnv(TorchVecEnv):
    """Acrobot-v1: swing a two-link pendulum up (Sutton, 1996), Gymnasium's "book" dynamics.

    State ``[theta1, theta2, dtheta1, dtheta2]``; action in {0, 1, 2} applies torque -1, 0, +1 at the
    joint. One classical RK4 step of length dt = 0.2 on Gymnasium's ``_dsdt`` (float64), then theta1 and
    theta2 are wrapped into [-pi, pi] and the velocities clipped to +-4 pi and +-9 pi. Terminated when
    ``-cos(theta1) - cos(theta1 + theta2) > 1``; reward -1 per step, 0 on the terminating one; truncated
    after 500 steps; reset state uniform in [-0.1, 0.1]^4 rounded to float32, as Gymnasium's.
    Observation ``[cos t1, sin t1, cos t2, sin t2, dt1, dt2]``.

    Example:
        >>> import torch
        >>> from rlopt import envs
        >>> env = envs.make("Acrobot-v1", num_envs=2, seed=0)
        >>> obs, _ = env.reset()
        >>> obs.shape
        torch.Size([2, 6])
    """

    env_id = "Acrobot-v1"
    state_names = ("theta1", "theta2", "dtheta1", "dtheta2")
    default_max_episode_steps = 500
    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_LENGTH_2 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    _high = np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32)
    single_observation_space = gym.spaces.Box(low=-_high, high=_high, dtype=np.float32)
    single_action_space = gym.spaces.Discrete(3)

    def _dsdt(self, y: Sequence[Array], a: Array) -> tuple[Array, Array, Array, Array]:
        """Gymnasium's ``_dsdt``: time derivative of ``y = (theta1, theta2, dtheta1, dtheta2)``."""
        theta1, theta2, dtheta1, dtheta2 = y
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1, lc2 = self.LINK_COM_POS_1, self.LINK_COM_POS_2
        I1 = I2 = self.LINK_MOI
        g = 9.8
        pi = math.pi
        xp = ops(a)
        sin2 = xp.sin(theta2)
        cos2 = xp.cos(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos2) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos2) + I2
        phi2 = m2 * lc2 * g * xp.cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * xp.square(dtheta2) * sin2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin2
            + (m1 * lc1 + m2 * l1) * g * xp.cos(theta1 - pi / 2)
            + phi2
        )
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * xp.square(dtheta1) * sin2 - phi2) / (
            m2 * lc2**2 + I2 - xp.square(d2) / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2

    @staticmethod
    def _wrap(x: Array, low: float, high: float) -> Array:
        """Gymnasium's ``wrap``: repeated +-(high - low) until inside; one step is the exact same op."""
        xp = ops(x)
        diff = high - low
        once_down = xp.where(x > high, x - diff, x)
        many_down = xp.where(once_down > high, x - diff * xp.ceil((x - high) / diff), once_down)
        once_up = xp.where(many_down < low, many_down + diff, many_down)
        return xp.where(once_up < low, many_down + diff * xp.ceil((low - many_down) / diff), once_up)

    def _dynamics(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        xp = ops(state)
        torque = xp.astype(action - 1, state.dtype)
        y0 = tuple(state)
        dt = self.dt
        dt2 = dt / 2.0
        k1 = self._dsdt(y0, torque)
        k2 = self._dsdt([y + dt2 * k for y, k in zip(y0, k1, strict=True)], torque)
        k3 = self._dsdt([y + dt2 * k for y, k in zip(y0, k2, strict=True)], torque)
        k4 = self._dsdt([y + dt * k for y, k in zip(y0, k3, strict=True)], torque)
        ns = [
            y + dt / 6.0 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(y0, k1, k2, k3, k4, strict=True)
        ]
        theta1 = self._wrap(ns[0], -math.pi, math.pi)
        theta2 = self._wrap(ns[1], -math.pi, math.pi)
        dtheta1 = xp.clip(ns[2], -self.MAX_VEL_1, self.MAX_VEL_1)
        dtheta2 = xp.clip(ns[3], -self.MAX_VEL_2, self.MAX_VEL_2)
        next_state = xp.stack((theta1, theta2, dtheta1, dtheta2))
        terminated = -xp.cos(theta1) - xp.cos(theta2 + theta1) > 1.0
        reward = xp.astype(terminated, xp.float32) - 1.0
        return next_state, reward, terminated

    def _observe(self, state: Array) -> Array:
        xp = ops(state)
        t1, t2, d1, d2 = state
        return xp.astype(xp.stack((xp.cos(t1), xp.sin(t1), xp.cos(t2), xp.sin(t2), d1, d2), 1), xp.float32)

    def _reset_states(self, uniform: torch.Tensor) -> torch.Tensor:
        # Gymnasium draws in float64 and stores the initial state as float32.
        return (-0.1 + (0.1 - -0.1) * uniform).to(torch.float32).to(uniform.dtype)


class MountainCarEnv(TorchVecEnv):
    """MountainCar-v0: drive an underpowered car up a hill (Moore, 1990), Gymnasium's dynamics.

    State ``[position, velocity]``; action in {0, 1, 2} (push left, none, right)::

        v <- clip(v + (a - 1) 0.001 - 0.0025 cos(3 p), -0.07, 0.07);  p <- clip(p + v, -1.2, 0.6)

    and v = 0 when the car hits the left wall moving left. Terminated when ``p >= 0.5`` and ``v >= 0``;
    reward -1 per step; truncated after 200 steps; reset p ~ U(-0.6, -0.4), v = 0.

    Example:
        >>> import torch
        >>> from rlopt import envs
        >>> env = envs.make("MountainCar-v0", num_envs=3, seed=0)
        >>> obs, _ = env.reset()
        >>> bool((obs[:, 1] == 0).all())
        True
    """

    env_id = "MountainCar-v0"
    state_names = ("position", "velocity")
    default_max_episode_steps = 200
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.5
    goal_velocity = 0.0
    force = 0.001
    gravity = 0.0025
    single_observation_space = gym.spaces.Box(
        np.array([min_position, -max_speed], dtype=np.float32),
        np.array([max_position, max_speed], dtype=np.float32),
        dtype=np.float32,
    )
    single_action_space: gym.spaces.Space[Any] = gym.spaces.Discrete(3)

    def _dynamics(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        xp = ops(state)
        position, velocity = state
        velocity = velocity + (
            xp.astype(action - 1, state.dtype) * self.force + xp.cos(3 * position) * (-self.gravity)
        )
        velocity = xp.clip(velocity, -self.max_speed, self.max_speed)
        position = xp.clip(position + velocity, self.min_position, self.max_position)
        velocity = xp.where(
            (position == self.min_position) & (velocity < 0), xp.zeros_like(velocity), velocity
        )
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = xp.full_like(position, -1.0, dtype=xp.float32)
        return xp.stack((position, velocity)), reward, terminated

    def _reset_states(self, uniform: torch.Tensor) -> torch.Tensor:
        position = -0.6 + (-0.4 - -0.6) * uniform[0]
        return torch.stack((position, torch.zeros_like(position)))


class MountainCarContinuousEnv(MountainCarEnv):
    """MountainCarContinuous-v0: MountainCar with a continuous force in [-1, 1], Gymnasium's dynamics.

    ``v <- clip(v + clip(a, -1, 1) 0.0015 - 0.0025 cos(3 p), +-0.07)``, ``p <- clip(p + v, -1.2, 0.6)``;
    terminated when ``p >= 0.45`` and ``v >= 0``; reward ``100 [terminated] - 0.1 a^2`` (the unclipped
    action, as Gymnasium); truncated after 999 steps. Gymnasium keeps this state in float32, so the
    default dtype here is float32 too.

    Example:
        >>> import torch
        >>> from rlopt import envs
        >>> env = envs.make("MountainCarContinuous-v0", num_envs=2, seed=0)
        >>> _ = env.reset()
        >>> obs, reward, *_ = env.step(torch.full((2, 1), 3.0))  # the force is clipped to 1
        >>> reward.tolist()  # but the cost uses the action given
        [-0.8999999761581421, -0.8999999761581421]
    """

    env_id = "MountainCarContinuous-v0"
    default_max_episode_steps = 999
    default_dtype = torch.float32
    min_action = -1.0
    max_action = 1.0
    goal_position = 0.45
    power = 0.0015
    single_observation_space = gym.spaces.Box(
        low=np.array([-1.2, -0.07], dtype=np.float32),
        high=np.array([0.6, 0.07], dtype=np.float32),
        dtype=np.float32,
    )
    single_action_space = gym.spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)

    def _dynamics(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        xp = ops(state)
        position, velocity = state
        raw = xp.astype(action[:, 0], xp.float32)
        force = xp.astype(xp.clip(raw, self.min_action, self.max_action), state.dtype)
        # Gymnasium evaluates cos(3 p) in double precision (math.cos) before rounding.
        slope = xp.astype(0.0025 * xp.cos(xp.astype(3 * position, xp.float64)), state.dtype)
        velocity = velocity + (force * self.power - slope)
        velocity = xp.clip(velocity, -self.max_speed, self.max_speed)
        position = xp.clip(position + velocity, self.min_position, self.max_position)
        velocity = xp.where(
            (position == self.min_position) & (velocity < 0), xp.zeros_like(velocity), velocity
        )
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        # Gymnasium's reward is a Python float: 100 [terminated] - math.pow(a, 2) * 0.1 in double.
        reward = xp.astype(
            xp.astype(terminated, xp.float64) * 100.0 - xp.square(xp.astype(raw, xp.float64)) * 0.1, xp.float32
        )
        return xp.stack((position, velocity)), reward, terminated


class PendulumEnv(TorchVecEnv):
    """Pendulum-v1: swing up and hold an inverted pendulum, Gymnasium's dynamics.

    State ``[theta, theta_dot]``; action: torque ``u`` in [-2, 2] (clipped)::

        cost = normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2      (pre-step state)
        theta_dot <- clip(theta_dot + (3 g / (2 l) sin theta + 3 / (m l^2) u) dt, -8, 8)
        theta <- theta + theta_dot dt

    with g = 10, m = l = 1, dt = 0.05; reward ``-cost``; never terminates; truncated after 200 steps;
    reset theta ~ U(-pi, pi), theta_dot ~ U(-1, 1). Observation ``[cos theta, sin theta, theta_dot]``.

    Args:
        g: gravity (Gymnasium's ``g`` keyword).
        **kwargs: see `TorchVecEnv`.

    Example:
        >>> import torch
        >>> from rlopt import envs
        >>> env = envs.make("Pendulum-v1", num_envs=2, seed=0)
        >>> obs, _ = env.reset()
        >>> obs.shape
        torch.Size([2, 3])
    """

    env_id = "Pendulum-v1"
    state_names = ("theta", "theta_dot")
    default_max_episode_steps = 200
    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    m = 1.0
    l = 1.0  # noqa: E741 (Gymnasium's name)
    _high = np.array([1.0, 1.0, max_speed], dtype=np.float32)
    single_observation_space = gym.spaces.Box(low=-_high, high=_high, dtype=np.float32)
    single_action_space = gym.spaces.Box(low=-max_torque, high=max_torque, shape=(1,), dtype=np.float32)

    def __init__(self, *args: Any, g: float = 10.0, **kwargs: Any) -> None:
        if isinstance(g, bool) or not isinstance(g, int | float):
            raise TypeError(f"Invalid g: {g!r}, expected a number")
        self.g = float(g)
        super().__init__(*args, **kwargs)

    def _dynamics(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        xp = ops(state)
        th, thdot = state
        # Gymnasium's torque stays float32 (the action's dtype) until it meets the float64 state.
        u = xp.clip(xp.astype(action[:, 0], xp.float32), -self.max_torque, self.max_torque)
        costs = (xp.square(angle_normalize(th)) + 0.1 * xp.square(thdot)
                 + xp.astype(0.001 * xp.square(u), state.dtype))
        newthdot = (
            thdot
            + (3 * self.g / (2 * self.l) * xp.sin(th) + xp.astype(3.0 / (self.m * self.l**2) * u, state.dtype))
            * self.dt
        )
        newthdot = xp.clip(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * self.dt
        terminated = xp.zeros_like(th, dtype=xp.bool)
        return xp.stack((newth, newthdot)), xp.astype(-costs, xp.float32), terminated

    def _observe(self, state: Array) -> Array:
        xp = ops(state)
        th, thdot = state
        return xp.astype(xp.stack((xp.cos(th), xp.sin(th), thdot), 1), xp.float32)

    def _prepare_renderer(self, renderer: Any, action: np.ndarray | None) -> None:
        # Gymnasium draws the clipped torque of the last step (None before the first)
        renderer.last_u = None if action is None else float(np.clip(action[0], -self.max_torque, self.max_torque))

    def _reset_states(self, uniform: torch.Tensor) -> torch.Tensor:
        theta = -math.pi + (math.pi - -math.pi) * uniform[0]
        theta_dot = -1.0 + (1.0 - -1.0) * uniform[1]
        return torch.stack((theta, theta_dot))


ENV_CLASSES: dict[str, type[TorchVecEnv]] = {
    cls.env_id: cls
    for cls in (CartPoleEnv, AcrobotEnv, MountainCarEnv, MountainCarContinuousEnv, PendulumEnv)
}
