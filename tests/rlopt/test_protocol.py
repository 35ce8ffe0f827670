"""Behaviour shared by the whole family: closure protocol, RNG and BatchNorm, failure, state, validation."""

from __future__ import annotations

import copy
import doctest
import importlib
import pickle

import pytest
import torch
from torch import nn

import rlopt
from rlopt.closure import RunningStatsGuard
from rlopt.envelope import InvSqrt
from tests.rlopt.problems import mlp

ALL = {
    "sls": lambda p: rlopt.SLS(p),
    "adasls": lambda p: rlopt.SLS(p, precondition="amsgrad", momentum=0.9),
    "sls-momentum": lambda p: rlopt.SLS(p, momentum=0.5),
    "slsb": lambda p: rlopt.SLS(p, envelope=InvSqrt(1.0)),
    "sps": lambda p: rlopt.SPS(p, max_lr=1.0),
    "decsps": lambda p: rlopt.SPS(p, mode="dec"),
    "sps-adam": lambda p: rlopt.SPS(p, precondition="adam", momentum=0.9),
    "ponos": lambda p: rlopt.PoNoS(p),
}


def _run(make: object, seed: int, steps: int, dropout: float = 0.2) -> tuple[nn.Module, torch.optim.Optimizer]:
    problem = mlp(seed, dropout=dropout)
    opt = make(problem.model.parameters())  # type: ignore[operator]
    for _ in range(steps):
        opt.step(problem.closure)
        problem.next_batch()
    return problem.model, opt


@pytest.mark.parametrize("name", sorted(ALL))
def test_deterministic_on_cpu(name: str) -> None:
    torch.manual_seed(123)
    m1, o1 = _run(ALL[name], 0, 15)
    torch.manual_seed(123)
    m2, o2 = _run(ALL[name], 0, 15)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert o1.stats == o2.stats


@pytest.mark.parametrize("name", sorted(ALL))
def test_state_dict_round_trip_in_lockstep(name: str) -> None:
    problem = mlp(1, dropout=0.0)
    opt = ALL[name](problem.model.parameters())
    for _ in range(5):
        opt.step(problem.closure)
        problem.next_batch()
    saved_opt = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(problem.model)
    opt2 = ALL[name](twin.parameters())
    opt2.load_state_dict(saved_opt)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(5))
    y = torch.cos(x.sum(1, keepdim=True))
    for _ in range(5):
        opt.step(lambda: nn.functional.mse_loss(problem.model(x), y))
        opt2.step(lambda: nn.functional.mse_loss(twin(x), y))
        assert opt.stats["step_size"] == opt2.stats["step_size"]
    for a, b in zip(problem.model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_state_dict_rejects_foreign_state() -> None:
    w = nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="rule_state"):
        rlopt.SLS([w]).load_state_dict(sgd.state_dict())


def test_dropout_trials_see_the_same_masks_and_rng_advances_once() -> None:
    torch.manual_seed(7)
    problem = mlp(2, dropout=0.5)
    opt = rlopt.SLS(problem.model.parameters(), lr=10.0)  # large first trial: forces backtracks
    before = torch.get_rng_state()
    opt.step(problem.closure)
    after = torch.get_rng_state()
    assert opt.stats["backtracks"] > 0
    # Recompute the loss at the accepted point with the masks of the step: equal to the accepted trial.
    torch.set_rng_state(before)
    with torch.no_grad():
        recomputed = problem.closure().item()
    assert recomputed == opt.stats["accepted_loss"]
    # The RNG is where a single evaluation leaves it.
    torch.set_rng_state(before)
    with torch.no_grad():
        problem.closure()
    assert torch.equal(torch.get_rng_state(), after)


def test_batchnorm_running_stats_as_if_evaluated_once() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    opt = rlopt.SLS(model.parameters(), lr=50.0)
    opt.step(lambda: nn.functional.mse_loss(model(x), y))
    assert opt.stats["backtracks"] > 0
    nn.functional.mse_loss(twin(x), y)  # one evaluation at w_k
    bn, bn_twin = model[1], twin[1]
    torch.testing.assert_close(bn.running_mean, bn_twin.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, bn_twin.running_var, rtol=0, atol=0)
    assert bn.num_batches_tracked.item() == bn_twin.num_batches_tracked.item() == 1


@pytest.mark.parametrize("name", ["sls", "ponos", "adasls"])
def test_batchnorm_running_stats_exact_over_many_steps(name: str) -> None:
    # After the first step the guard snapshots the layers it found instead of hooking every module call;
    # the statistics must still be those of one evaluation per step, step after step (past a rediscovery).
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = ALL[name](model.parameters())
    opt._running_stats.rediscover_every = 4
    trials = 0
    for _ in range(10):
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        twin = copy.deepcopy(model)
        opt.step(lambda x=x, y=y: nn.functional.mse_loss(model(x), y))
        trials += opt.stats["forward_calls"] - 1
        nn.functional.mse_loss(twin(x), y)  # one evaluation at w_k
        for name_ in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(model[1], name_), getattr(twin[1], name_), rtol=0, atol=0)
    assert trials >= 10  # every step evaluated at least one trial point


def test_running_stats_guard_finds_layers_and_restores_them() -> None:
    guard = RunningStatsGuard(rediscover_every=2)
    bn = nn.BatchNorm1d(3)
    late = nn.BatchNorm1d(3)  # first runs after the first discovery
    x = torch.randn(8, 3)
    with guard():
        bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0
    with guard():  # no hook: snapshots the layer found above
        bn(x)
        late(x)
    assert int(bn.num_batches_tracked) == 0
    assert int(late.num_batches_tracked) == 1  # unknown until the next discovery, documented
    with guard():  # discovery again: both found
        bn(x)
        late(x)
    assert int(bn.num_batches_tracked) == 0 and int(late.num_batches_tracked) == 1
    with guard():
        bn(x)
        late(x)
    assert int(late.num_batches_tracked) == 1
    clone = pickle.loads(pickle.dumps(guard))  # weak references are dropped, not pickled
    assert clone.rediscover_every == 2
    with pytest.raises(ValueError, match="rediscover_every"):
        RunningStatsGuard(rediscover_every=0)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_copies_step_in_lockstep(name: str, how: str) -> None:
    # A pickled or deep-copied optimizer (with its model) carries its rule state and steps like the original.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = ALL[name](model.parameters())
    batches = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(4)]
    opt.step(lambda: nn.functional.mse_loss(model(batches[0][0]), batches[0][1]))
    pair = (model, opt)
    model2, opt2 = pickle.loads(pickle.dumps(pair)) if how == "pickle" else copy.deepcopy(pair)
    for x, y in batches[1:]:
        opt.step(lambda x=x, y=y: nn.functional.mse_loss(model(x), y))
        opt2.step(lambda x=x, y=y: nn.functional.mse_loss(model2(x), y))
        assert {k: repr(v) for k, v in opt2.stats.items()} == {k: repr(v) for k, v in opt.stats.items()}
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_non_finite_loss_or_gradient_skips_the_step(name: str) -> None:
    problem = mlp(3, dropout=0.0)
    opt = ALL[name](problem.model.parameters())
    opt.step(problem.closure)  # some state to protect
    params = [p.detach().clone() for p in problem.model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(lambda: problem.closure() * float("nan"))
    w = next(problem.model.parameters())
    # finite loss, NaN gradient: d sqrt(|w|)/dw at w = 0
    opt.step(lambda: problem.closure() + torch.sqrt((w * 0).abs()).sum())  # warned once only
    assert opt.stats["skipped"] == 2
    for p, q in zip(problem.model.parameters(), params, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    after = opt.state_dict()
    assert after["rule_state"] == state["rule_state"]
    for key, value in state["state"].items():
        for buf_name, buf in value.items():
            torch.testing.assert_close(after["state"][key][buf_name], buf, rtol=0, atol=0)


def test_non_finite_trial_is_rejected_not_taken() -> None:
    w = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))

    def closure() -> torch.Tensor:
        # log barrier: infinite (NaN) beyond w = 0, so large trials are not finite
        return (w**2).sum() - torch.log(w).sum()

    opt = rlopt.SLS([w], lr=100.0)
    opt.step(closure)
    assert opt.stats["backtracks"] > 0 and opt.stats["step_size"] > 0
    assert torch.isfinite(closure()).item()


def test_search_failure_takes_no_step_and_is_counted() -> None:
    w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = rlopt.SLS([w], max_backtracks=3)
    before = opt.rule_state["step_size"]

    def closure() -> torch.Tensor:  # the "gradient" points uphill: no trial can pass
        return w.sum() if torch.is_grad_enabled() else -(-w).sum() + 1.0

    with pytest.warns(RuntimeWarning, match="no trial"):
        opt.step(closure)
    assert opt.stats["failures"] == 1 and opt.stats["step_size"] == 0.0
    assert opt.stats["forward_calls"] == 1 + 4
    assert w.item() == 1.0
    assert opt.rule_state["step_size"] == before


def test_closure_misuse_is_reported() -> None:
    w = nn.Parameter(torch.ones(3))
    opt = rlopt.SLS([w])

    def calls_backward() -> torch.Tensor:
        loss = (w**2).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="without calling backward"):
        opt.step(calls_backward)
    with pytest.raises(TypeError, match="scalar tensor"):
        opt.step(lambda: w**2)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step(loss=(w**2).sum())
    with pytest.raises(ValueError, match="exactly one"):
        opt.step()
    with pytest.raises(RuntimeError, match="does not require grad"):
        opt.step(lambda: torch.tensor(1.0))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda p: rlopt.SLS(p, c=1.5), "Invalid c"),
        (lambda p: rlopt.SLS(p, lr=0.0), "Invalid lr"),
        (lambda p: rlopt.SLS(p, beta=1.0), "Invalid beta"),
        (lambda p: rlopt.SLS(p, reset="grow"), "Invalid reset"),
        (lambda p: rlopt.SLS(p, gamma=0.5), "Invalid gamma"),
        (lambda p: rlopt.SLS(p, n_batches_per_epoch=0), "Invalid n_batches_per_epoch"),
        (lambda p: rlopt.SLS(p, precondition="rmsprop"), "Invalid precondition"),
        (lambda p: rlopt.SLS(p, momentum=1.0), "Invalid momentum"),
        (lambda p: rlopt.SLS(p, envelope=3.0), "Invalid envelope"),
        (lambda p: rlopt.SLS(p, max_lr=-1.0), "Invalid max_lr"),
        (lambda p: rlopt.SPS(p, c=0.0), "Invalid c"),
        (lambda p: rlopt.SPS(p, mode="min"), "Invalid mode"),
        (lambda p: rlopt.SPS(p, f_star=float("nan")), "Invalid f_star"),
        (lambda p: rlopt.PoNoS(p, delta=0.0), "Invalid delta"),
        (lambda p: rlopt.PoNoS(p, xi=1.5), "Invalid xi"),
        (lambda p: rlopt.PoNoS(p, min_lr=20.0), "Invalid min_lr"),
        (lambda p: rlopt.PolyakPG(p, margin=0.0), "Invalid margin"),
        (lambda p: rlopt.PolyakPG(p, j_star=float("inf")), "Invalid j_star"),
        (lambda p: InvSqrt(-1.0), "Invalid lr_b"),
    ],
)
def test_constructor_validation(factory: object, match: str) -> None:
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=match):
        factory([w])  # type: ignore[operator]


def test_param_groups_share_one_step_size() -> None:
    a, b = nn.Parameter(torch.ones(2, dtype=torch.float64)), nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = rlopt.SLS([{"params": [a]}, {"params": [b]}], c=0.1)
    loss = opt.step(lambda: (a**2).sum() + 2 * (b**2).sum())
    assert len(opt.param_groups) == 2
    # both groups moved along their own gradient by the one step size (grad a = 2a, grad b = 4b at ones)
    eta = opt.stats["step_size"]
    assert 0 < eta < 1
    torch.testing.assert_close(a.detach(), torch.full((2,), 1 - 2 * eta, dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.full((3,), 1 - 4 * eta, dtype=torch.float64))
    # and that step size passed the Armijo test on the global ||g||^2 = 2 * 2^2 + 3 * 4^2 = 56
    new_loss = float((a.detach() ** 2).sum() + 2 * (b.detach() ** 2).sum())
    assert new_loss <= float(loss.detach()) - 0.1 * eta * 56.0
    assert opt.stats["grad_norm"] == pytest.approx(56.0**0.5)
    with pytest.raises(ValueError, match="share the step-size hyperparameters"):
        rlopt.SLS([{"params": [a]}, {"params": [b], "c": 0.3}])
    with pytest.raises(ValueError, match="Invalid c"):
        rlopt.SLS([{"params": [a], "c": 2.0}])


def test_build_optimizer_and_closure_step() -> None:
    assert isinstance(rlopt.build_optimizer("PoNoS", [nn.Parameter(torch.ones(1))]), rlopt.PoNoS)
    with pytest.raises(ValueError, match="Invalid optimizer"):
        rlopt.build_optimizer("lbfgs2", [nn.Parameter(torch.ones(1))])
    # A torch optimizer through closure_step equals the manual loop, clipping included.
    torch.manual_seed(0)
    m1 = nn.Linear(3, 1)
    m2 = copy.deepcopy(m1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    o1 = rlopt.build_optimizer(torch.optim.Adam, m1.parameters(), lr=0.1)
    o2 = torch.optim.Adam(m2.parameters(), lr=0.1)
    for _ in range(3):
        rlopt.closure_step(o1, lambda: nn.functional.mse_loss(m1(x), y), max_grad_norm=0.1)
        o2.zero_grad()
        nn.functional.mse_loss(m2(x), y).backward()
        nn.utils.clip_grad_norm_(m2.parameters(), 0.1)
        o2.step()
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_works_on_device(device: torch.device) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1)).to(device)
    x, y = torch.randn(32, 4, device=device), torch.randn(32, 1, device=device)
    for make in ALL.values():
        opt = make(model.parameters())
        first = opt.step(lambda: nn.functional.mse_loss(model(x), y))
        assert first is not None and first.device.type == device.type
        assert opt.stats["step_size"] >= 0


@pytest.mark.parametrize(
    "module", ["rlopt.sls", "rlopt.sps", "rlopt.ponos", "rlopt.polyak_pg", "rlopt.envelope", "rlopt.factory"]
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", ["sls", "adasls", "ponos", "sps"])
def test_reduce_seam_sees_every_decision_scalar_and_matches_single_process(name: str) -> None:
    """A data-parallel subclass overrides ``_reduce``; with an identity reduce it must take the same steps.

    The single-process path reads the loss and ``||g||^2`` out in one fused transfer; the overridden path
    stacks them as tensors for an all-reduce. Both must agree, and the seam must see the loss, ``||g||^2``
    and every trial loss.
    """
    seen: list[list[float]] = []

    def reducing(make: object) -> object:
        def build(params: object) -> torch.optim.Optimizer:
            opt = make(params)  # type: ignore[operator]

            def _reduce(self: object, values: torch.Tensor) -> torch.Tensor:
                seen.append(values.tolist())
                return values

            opt.__class__ = type("Reducing" + type(opt).__name__, (type(opt),), {"_reduce": _reduce})
            return opt

        return build

    torch.manual_seed(5)
    m1, o1 = _run(ALL[name], 3, 12, dropout=0.0)
    torch.manual_seed(5)
    m2, o2 = _run(reducing(ALL[name]), 3, 12, dropout=0.0)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert o2.stats["step_size"] == pytest.approx(o1.stats["step_size"], rel=1e-9)
    assert o2.stats["forward_calls"] == o1.stats["forward_calls"]
    loss_v, grad_sq = seen[-o2.stats["forward_calls"] - (name == "adasls")]  # the step's first reduce: [loss, |g|^2]
    assert loss_v == pytest.approx(o2.stats["loss"], rel=1e-12)
    assert grad_sq == pytest.approx(o2.stats["grad_norm"] ** 2, rel=1e-12)


def test_the_registry_states_each_rules_traits() -> None:
    traits = {name: (spec.line_search, spec.needs_value, spec.default_lr, spec.tuning_free)
              for name, spec in rlopt.OPTIMIZERS.items()}
    assert traits == {
        "adam": (False, False, 1e-3, False), "sgd": (False, False, 1e-2, False),
        "sls": (True, False, None, True), "adasls": (True, False, None, True), "sps": (False, False, None, True),
        "ponos": (True, False, None, True), "polyak": (False, True, None, True),
    }
    # a class or an instance gets the registered traits, with the class itself as the factory
    assert rlopt.optimizer_spec(torch.optim.Adam).default_lr == 1e-3
    assert rlopt.optimizer_spec(torch.optim.Adam).factory is torch.optim.Adam
    w = nn.Parameter(torch.ones(2))
    assert rlopt.optimizer_spec(rlopt.PoNoS([w])).line_search
    assert rlopt.optimizer_spec(torch.optim.RMSprop).name == "rmsprop"  # unregistered: traits from the class
    assert isinstance(rlopt.build_optimizer("ADASLS", [w]), rlopt.SLS)
    with pytest.raises(ValueError, match=r"Invalid optimizer: 'lbfgs2', expected one of 'adam', 'adasls'"):
        rlopt.optimizer_spec("lbfgs2")
    with pytest.raises(TypeError, match="Invalid optimizer: 3"):
        rlopt.optimizer_spec(3)  # type: ignore[arg-type]


def test_step_stats_reads_rlopt_and_torch_optimizers_alike() -> None:
    w = nn.Parameter(torch.ones(3))
    sls = rlopt.SLS([w])
    sls.step(lambda: (w**2).sum())
    assert rlopt.step_stats(sls) == (sls.stats["step_size"], sls.stats["backtracks"], sls.stats["forward_calls"])
    adam = torch.optim.Adam([w], lr=0.25)
    assert rlopt.step_stats(adam) == rlopt.StepStats(0.25, 0.0, 1.0)


def test_a_registered_optimizer_is_accepted_by_name_everywhere() -> None:
    spec = rlopt.OptimizerSpec("rmsprop-test", torch.optim.RMSprop, torch.optim.RMSprop, default_lr=1e-2)
    rlopt.register_optimizer(spec)
    try:
        assert isinstance(rlopt.build_optimizer("rmsprop-test", [nn.Parameter(torch.ones(1))]), torch.optim.RMSprop)
        with pytest.raises(ValueError, match="already registered"):
            rlopt.register_optimizer(spec)
    finally:
        del rlopt.OPTIMIZERS["rmsprop-test"]


def test_grad_hook_sees_the_gradients_before_the_rule_and_clipping() -> None:
    """A gradient hook (the agents' data-parallel averaging) changes the gradients every later read uses: the
    Polyak step and ``stats`` are those of the hooked gradient; a removed hook no longer runs."""
    w = nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    opt = rlopt.SPS([w], c=0.5, max_lr=10.0)
    seen: list[torch.Tensor] = []

    def double(_: object, grads: list[torch.Tensor]) -> None:
        seen.append(grads[0].clone())
        for g in grads:
            g.mul_(2.0)

    handle = opt.register_grad_hook(double)
    opt.step(lambda: 0.5 * (w * w).sum())  # f = 12.5, g = w, the hook makes it 2w
    g = 2.0 * torch.tensor([3.0, -4.0], dtype=torch.float64)
    eta = 12.5 / (0.5 * float(g @ g))
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, -4.0], dtype=torch.float64) - eta * g)
    assert opt.stats["grad_norm"] == pytest.approx(10.0) and len(seen) == 1
    handle.remove()
    opt.step(lambda: 0.5 * (w * w).sum())
    assert len(seen) == 1

    # closure_step: the hook runs on a torch optimizer's gradients before clipping, once per rlopt step
    v = nn.Parameter(torch.tensor([1.0, 0.0]))
    sgd = torch.optim.SGD([v], lr=1.0)
    rlopt.closure_step(sgd, lambda: (v * torch.tensor([3.0, 4.0])).sum(), max_grad_norm=1.0,
                       grad_hook=lambda grads: [g.zero_().add_(torch.tensor([0.0, 2.0])) for g in grads])
    torch.testing.assert_close(v.detach(), torch.tensor([1.0, -1.0]))  # clipped after the hook: norm 2 -> 1
    calls: list[int] = []
    rlopt.closure_step(opt, lambda: 0.5 * (w * w).sum(), grad_hook=lambda grads: calls.append(len(grads)))
    assert calls == [1] and not opt._grad_hooks  # registered for the step only
