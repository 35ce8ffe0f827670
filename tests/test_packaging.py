"""The wheel holds one top-level package, ``rlopt``, with the folders mapped into it, and its core runs with torch
alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"rlopt": "rlopt", "envs": "rlopt/envs", "agents": "rlopt/agents", "bilevel": "rlopt/bilevel",
          "tools": "rlopt/tools"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # from a copy of the sources: setuptools' build/ folder in a checkout can hold files deleted since
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *MAPPED):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                   check=True, capture_output=True)
    (path,) = out.glob("*.whl")
    return path


def _sources() -> set[str]:
    """Every module and data file of the five folders, at the path the wheel must hold it."""
    expected = set()
    for folder, target in MAPPED.items():
        for file in (ROOT / folder).rglob("*"):
            rel = file.relative_to(ROOT / folder)
            if folder == "rlopt" and rel.parts[0] in MAPPED:
                continue  # the links to the other folders
            if file.suffix in (".py", ".yaml", ".typed") and "__pycache__" not in rel.parts:
                expected.add(f"{target}/{rel.as_posix()}")
    return expected


def test_the_wheel_has_rlopt_alone_at_the_top_and_every_module_under_it(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"rlopt", f"{wheel.name.split('-')[0]}-0.1.0.dist-info"}
    assert wheel.name.startswith("torch_rlopt-")
    files = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert files == _sources()


def test_the_wheel_registers_the_command_and_its_subcommands(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = z.read(info).decode()
    assert "rlopt = rlopt.cli:main" in text
    for name, target in (("train", "rlopt.agents.cli:train_main [rl]"), ("plot", "rlopt.tools.cli:plot_main [rl]"),
                         ("bench", "rlopt.tools.cli:bench_main"), ("agents", "rlopt.agents.suite:main [rl]"),
                         ("optim", "rlopt.tools.cli:bench_optim_main [rl,bilevel]"),
                         ("bilevel", "rlopt.bilevel.cli:main [rl,bilevel]"),
                         ("rema", "rlopt.agents.rema.cli:main [rl]")):
        assert f"{name} = {target}" in text


def _dependency_closure(name: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return seen
    seen.add(key)
    try:
        requires = metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        return seen
    for requirement in requires:
        if "extra ==" not in requirement:
            _dependency_closure(re.match(r"[A-Za-z0-9._-]+", requirement).group(0), seen)
    return seen


def test_the_core_imports_and_steps_with_torch_alone(wheel: Path, tmp_path: Path) -> None:
    """The installed wheel on a path that holds torch and its own dependencies and nothing else (no site
    packages): ``import rlopt`` works, an SLS step runs, and ``rlopt.envs`` asks for its extra."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    torch_alone = tmp_path / "torch_alone"
    torch_alone.mkdir()
    for name in _dependency_closure("torch"):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "bin"}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (torch_alone / top).exists():
                (torch_alone / top).symlink_to(source)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(site)!r}, {str(torch_alone)!r}]
        import torch, rlopt, rlopt.cli
        assert rlopt.__file__.startswith({str(site)!r}), rlopt.__file__
        w = torch.zeros(3, requires_grad=True)
        opt = rlopt.SLS([w])
        loss = opt.step(lambda: ((w - 1.0) ** 2).sum())
        assert float(((w.detach() - 1.0) ** 2).sum()) < float(loss)
        try:
            import rlopt.envs
        except ModuleNotFoundError as error:
            print("envs:", error)
    """)
    # -S: no site-packages and no .pth hooks (the development install's among them); -I: no user site, no cwd
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("envs: No module named 'gymnasium'")  # the RL layer needs its extra
