"""ReMA checkpoints: one ``torch.save`` file of tensors and plain data, written atomically and read weights-only.

A checkpoint holds the constructor's arguments (the :class:`rlopt.agents.rema.ReMAConfig` fields as plain data),
the models, their frozen references, the optimizers' states, the counters, the task streams' and the sampler's
generator states and the history, so :func:`load` resumes a run exactly. It never holds a pickled object:
:func:`load` reads it with ``weights_only=True`` and refuses anything else, so loading cannot run code.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlopt._atomic import atomic_write
from rlopt.agents.rema.policy import Policy, TinyConfig
from rlopt.agents.rema.rollout import Prompts, RewardConfig
from rlopt.envs.reasoning import ArithmeticTasks, ReasoningTask

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rlopt.agents.rema.rema import ReMA

__all__ = ["FORMAT", "load", "save"]

#: the checkpoint layout's version
FORMAT = 1


def save(agent: ReMA, path: str | os.PathLike[str]) -> None:
    """Write ``agent``'s checkpoint to ``path`` atomically (a temporary file, then ``os.replace``)."""
    state = {
        "format": FORMAT,
        "kwargs": agent._init_kwargs,
        "policy": agent._policy_spec,
        "tiny_config": asdict(agent.tiny_config),
        "rewards": asdict(agent.rewards),
        "prompts": asdict(agent.prompts),
        "optimizer": agent._optimizer_spec,
        "optimizer_kwargs": agent._optimizer_kwargs,
        "tasks": [asdict(t) for t in agent.tasks],
        "eval_tasks": [asdict(t) for t in agent.eval_tasks],
        "ood_tasks": [asdict(t) for t in agent.ood_tasks],
        "models": {n: agent.policies[r[0]].state_dict() for n, r in agent._model_roles().items()},
        "references": {n: p.state_dict() for n, p in agent.references.items()},
        "optimizers": {n: o.state_dict() for n, o in agent.optimizers.items()},
        "counters": [agent.num_updates, agent.num_samples, agent.num_generated_tokens],
        "filter_state": {"tokens": agent.num_filter_tokens, "fallbacks": agent.filter_fallbacks,
                         "phase_tasks": None if agent._phase_tasks is None else [asdict(t) for t in
                                                                                agent._phase_tasks],
                         "phase_order": list(agent._phase_order), "task_order": list(agent._task_order),
                         "task_generator": agent._task_generator.get_state()},
        "history": agent.history,
        "task_stream": None if agent._task_stream is None else agent._task_stream.generator.get_state(),
        "stream_config": None if agent._task_stream is None else [
            agent._task_stream.min_operands, agent._task_stream.max_operands, agent._task_stream.modulus,
            agent._task_stream.max_operand, agent._task_stream.operators],
        "sampler": agent.sampler.get_state(),
    }
    with atomic_write(path) as f:
        torch.save(state, f)


def load(cls: type[ReMA], path: str | os.PathLike[str], device: str | torch.device = "cpu",
         policy: Policy | Mapping[str, Policy] | None = None, **overrides: Any) -> ReMA:
    """The trainer of class ``cls`` saved in ``path`` (see :meth:`rlopt.agents.rema.ReMA.load`).

    Raises:
        ValueError: for a file that is not a ReMA checkpoint, or holds anything but tensors and plain data.
    """
    try:
        # weights only: tensors and plain containers, never an object whose unpickling runs code
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"Invalid checkpoint: {path} holds objects other than tensors and plain data "
                         f"(a ReMA checkpoint never does), so it is refused: {error}") from None
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError) as error:  # torch's reader on a truncated or foreign file
        raise ValueError(f"Invalid checkpoint: {path} is not a complete ReMA checkpoint (a file written by "
                         f"ReMA.save); reading it failed: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"Invalid checkpoint: {path} is not a ReMA checkpoint")
    if state["policy"] != "tiny" and policy is None:
        raise ValueError("Invalid policy: this checkpoint holds custom policies, pass policy= to load")
    kwargs = dict(state["kwargs"])
    tasks: Any = [ReasoningTask(**t) for t in state["tasks"]]
    if state["stream_config"] is not None:
        low, high, modulus, max_operand, operators = state["stream_config"]
        tasks = ArithmeticTasks(low, high, modulus, max_operand, operators, seed=int(kwargs["seed"]))
    optimizer = state["optimizer"]
    if "custom" in optimizer.values():
        raise ValueError("Invalid checkpoint: optimizer classes are not stored; rebuild the trainer and load "
                         "its state instead")
    kwargs.update(tiny_config=TinyConfig(**state["tiny_config"]), optimizer=optimizer,
                  optimizer_kwargs=state["optimizer_kwargs"], rewards=RewardConfig(**state["rewards"]),
                  prompts=Prompts(**state["prompts"]),
                  eval_tasks=[ReasoningTask(**t) for t in state["eval_tasks"]],
                  ood_tasks=[ReasoningTask(**t) for t in state["ood_tasks"]], device=device)
    kwargs.update(overrides)
    agent = cls(tasks, policy if policy is not None else "tiny", **kwargs)
    for name, sd in state["models"].items():
        agent.policies[agent._model_roles()[name][0]].load_state_dict(sd)
    for name, sd in state["references"].items():
        reference = agent.policies[agent._model_roles()[name][0]].frozen_copy()
        reference.load_state_dict(sd)
        agent.references[name] = reference
    for name, sd in state["optimizers"].items():
        agent.optimizers[name].load_state_dict(sd)
    agent.num_updates, agent.num_samples, agent.num_generated_tokens = state["counters"]
    filter_state = state.get("filter_state")
    if filter_state is not None:
        agent.num_filter_tokens, agent.filter_fallbacks = filter_state["tokens"], filter_state["fallbacks"]
        phase = filter_state["phase_tasks"]
        agent._phase_tasks = None if phase is None else [ReasoningTask(**t) for t in phase]
        agent._phase_order = list(filter_state["phase_order"])
        agent._task_order = list(filter_state["task_order"])
        agent._task_generator.set_state(filter_state["task_generator"])
    agent.history = list(state["history"])
    if state["task_stream"] is not None and agent._task_stream is not None:
        agent._task_stream.generator.set_state(state["task_stream"])
    agent.sampler.set_state(state["sampler"].to("cpu") if agent.device.type == "cpu" else state["sampler"])
    if agent.rank != 0:  # rank 0's stream was saved: a rank resuming beside it continues on a stream of its own
        stream = np.random.SeedSequence([agent.seed + 2, agent.rank, agent.num_updates]).generate_state(1)[0]
        agent.sampler.manual_seed(int(stream))
    return agent
