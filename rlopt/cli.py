"""The ``rlopt`` command: a dispatcher over the subcommands that installed packages register.

    rlopt train [ALGO] [ENV]   train a policy-gradient agent (default: PPO on batched CartPole-v1)
    rlopt bilevel PROBLEM      solve a bilevel problem with BiSLS/BiSPS (or SGD/Adam) step sizes
    rlopt rema                 train ReMA's meta-thinker and reasoner on a verifiable reasoning task
    rlopt bench optim          tuning-free step sizes vs tuned SGD/Adam on bundled datasets
    rlopt plot RUN_DIR         plot the TensorBoard scalars of a run directory to a PNG

A subcommand is an entry point in the group ``rlopt.commands`` whose object is a function
``main(argv: list[str]) -> int``; the first line of its docstring is its one-line help. Each package registers
its own in ``pyproject.toml`` (the core names none of them), and any installed distribution can add one::

    [project.entry-points."rlopt.commands"]
    mycommand = "mypackage.cli:main [extra]"

The bracket names the extras the command needs: when one of their requirements is not installed, ``rlopt``
prints one line naming the extra instead of an import traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

__all__ = ["ENTRY_POINT_GROUP", "USER_ERRORS", "commands", "load_command", "main", "missing_requirements"]

ENTRY_POINT_GROUP = "rlopt.commands"

Command = Callable[[list[str]], int]

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def commands(group: str = ENTRY_POINT_GROUP) -> dict[str, metadata.EntryPoint]:
    """The registered subcommands of ``group`` by name (the first registration of a name wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_requirements(ep: metadata.EntryPoint) -> dict[str, list[str]]:
    """``{extra: [requirement names not installed]}`` for the extras that ``ep`` declares it needs."""
    if not ep.extras or ep.dist is None:
        return {}
    wanted = {_normalize(e) for e in ep.extras}
    missing: dict[str, list[str]] = {}
    for requirement in ep.dist.requires or []:
        spec, _, marker = requirement.partition(";")
        extra = _EXTRA.search(marker)
        name = _NAME.match(spec)
        if extra is None or name is None or _normalize(extra.group(1)) not in wanted:
            continue
        try:
            metadata.distribution(name.group(1))
        except metadata.PackageNotFoundError:
            missing.setdefault(extra.group(1), []).append(name.group(1))
    return missing


def _install_hint(ep: metadata.EntryPoint, missing: dict[str, list[str]], prog: str) -> str:
    dist = ep.dist.metadata["Name"] if ep.dist is not None else "torch-rlopt"
    extras = ",".join(missing)
    names = ", ".join(n for names in missing.values() for n in names)
    return f"{prog}: needs the extra '{extras}' ({names} not installed): pip install '{dist}[{extras}]'"


def load_command(ep: metadata.EntryPoint, prog: str | None = None) -> Command:
    """The command's function, or ``SystemExit`` with one line when an extra it needs is not installed
    (``prog`` names it in that line; default ``rlopt NAME``)."""
    prog = prog or f"rlopt {ep.name}"
    missing = missing_requirements(ep)
    if missing:
        raise SystemExit(_install_hint(ep, missing, prog))
    try:
        func: Command = ep.load()
    except ImportError as error:
        raise SystemExit(f"{prog}: cannot import {ep.value}: {error}") from error
    return func


def _summary(ep: metadata.EntryPoint) -> str:
    """One line of help for the command list (imports the command's module)."""
    missing = missing_requirements(ep)
    if missing:
        return f"(needs the extra '{','.join(missing)}')"
    try:
        func = ep.load()
    except ImportError as error:
        return f"(cannot import: {error})"
    doc = (func.__doc__ or "").strip().splitlines()
    return doc[0].rstrip(".") if doc else ""


def _parser(found: dict[str, metadata.EntryPoint], describe: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlopt", description="Tuning-free step sizes for PyTorch: training, bilevel solvers, benchmarks, plots.",
        epilog="rlopt COMMAND --help explains every option of COMMAND; --debug shows the traceback of an error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, ep in found.items():
        sub.add_parser(name, help=_summary(ep) if describe else None, add_help=False)
    return parser


#: errors a command raises for bad input (a wrong argument, an unknown id, a missing file): one line, no traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlopt`` command; returns the exit status.

    A user error raised by a command (:data:`USER_ERRORS`) is printed as one line, ``rlopt COMMAND: message``,
    with exit status 2; ``--debug`` anywhere on the command line shows the traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    found = commands()
    if args and args[0] in found:
        command = load_command(found[args[0]])
        if debug:
            return command(args[1:])
        try:
            return command(args[1:])
        except USER_ERRORS as error:
            print(f"rlopt {args[0]}: {error} (--debug shows the traceback)", file=sys.stderr)
            return 2
    if not found:
        raise SystemExit("rlopt: no subcommands are installed (pip install 'torch-rlopt[rl]' gives train and plot)")
    # no command, an unknown one, or --help: argparse exits with the usage (commands described only for --help)
    _parser(found, describe=any(a in ("-h", "--help") for a in args)).parse_args(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
