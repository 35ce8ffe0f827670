"""The `rlopt` dispatcher: subcommands come from entry points, a missing extra is named in one line."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from rlopt import cli

BUILT_IN = {"bench", "bilevel", "plot", "rema", "train"}


def test_the_installed_distribution_registers_every_built_in_command() -> None:
    found = cli.commands()
    assert set(found) >= BUILT_IN
    assert {found[name].value.split(":")[0] for name in BUILT_IN} == {
        "rlopt.agents.cli", "rlopt.agents.rema.cli", "rlopt.bilevel.cli", "rlopt.tools.cli"}
    assert all(not cli.missing_requirements(found[name]) for name in BUILT_IN)  # the dev install has every extra


def test_help_lists_every_command_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "train a policy-gradient agent" in out.lower() and "plot the tensorboard scalars" in out.lower()
    assert all(name in out for name in BUILT_IN)


@pytest.mark.parametrize("argv", [[], ["no-such-command"]])
def test_no_or_an_unknown_command_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution that registers two commands: one needs an extra that is not installed."""
    info = tmp_path / "rlopt_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(textwrap.dedent("""\
        Metadata-Version: 2.1
        Name: rlopt-plugin
        Version: 1.0
        Provides-Extra: heavy
        Requires-Dist: no-such-distribution-for-rlopt-tests>=1; extra == "heavy"
        """))
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [rlopt.commands]
        hello = rlopt_plugin_mod:hello
        heavy = rlopt_plugin_mod:hello [heavy]
        fail = rlopt_plugin_mod:fail
        """))
    (tmp_path / "rlopt_plugin_mod.py").write_text(textwrap.dedent('''\
        def hello(argv):
            """Say hello."""
            print("hello", *argv)
            return 7

        def fail(argv):
            """Fail."""
            raise ValueError("Invalid x: 3, expected 1 or 2")
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("rlopt_plugin_mod", None)


def test_a_third_party_command_runs_with_its_arguments(third_party: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "hello" in cli.commands()
    assert cli.main(["hello", "a", "b"]) == 7
    assert capsys.readouterr().out == "hello a b\n"


def test_a_missing_extra_is_named_in_one_line(third_party: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["heavy"])
    message = str(exc.value.code)
    assert "\n" not in message
    assert message == ("rlopt heavy: needs the extra 'heavy' (no-such-distribution-for-rlopt-tests not installed): "
                       "pip install 'rlopt-plugin[heavy]'")
    assert "rlopt_plugin_mod" not in sys.modules  # refused before importing anything


def test_help_says_which_extra_a_command_needs(third_party: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "heavy (needs the extra 'heavy')" in out and "hello Say hello" in out


def test_a_user_error_is_one_line_and_debug_shows_the_traceback(third_party: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fail"]) == 2
    err = capsys.readouterr().err
    assert err == "rlopt fail: Invalid x: 3, expected 1 or 2 (--debug shows the traceback)\n"
    with pytest.raises(ValueError, match="Invalid x: 3"):
        cli.main(["fail", "--debug"])
