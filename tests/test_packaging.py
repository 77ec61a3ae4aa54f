"""Packaging: every module and device profile of the source folders is in the wheel and imports from it.

The top-level folders (fptt_edge/, export/, runtime/, devices/) map onto one package through
pyproject's package-dir, which setuptools' package discovery cannot follow, so the package list
is explicit; these tests fail when a new module, subpackage or profile would be left out.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
FOLDERS = {"fptt_edge": "fptt_edge", **SETUPTOOLS["package-dir"]}  # package -> source folder


def shipped_files() -> dict[str, Path]:
    """Path inside the wheel -> source file, for every .py under the package folders and every devices/*.toml."""
    out = {}
    for package, folder in FOLDERS.items():
        base = ROOT / folder
        prefix = package.replace(".", "/")
        for path in base.rglob("*.py"):
            if "__pycache__" not in path.parts:
                out[f"{prefix}/{path.relative_to(base).as_posix()}"] = path
    for path in (ROOT / FOLDERS["fptt_edge.devices"]).glob("*.toml"):
        out[f"fptt_edge/devices/{path.name}"] = path
    return out


def test_every_source_folder_is_a_listed_package():
    needed = {str(PurePosixPath(p).parent).replace("/", ".") for p in shipped_files() if p.endswith(".py")}
    assert needed <= set(SETUPTOOLS["packages"]), f"add to [tool.setuptools] packages: {sorted(needed - set(SETUPTOOLS['packages']))}"
    for package in needed:  # a folder without __init__.py would ship as a namespace package, or not at all
        assert f"{package.replace('.', '/')}/__init__.py" in shipped_files(), f"{package} has no __init__.py"


def test_the_wheel_holds_and_imports_every_module(tmp_path):
    src = tmp_path / "src"  # a clean copy: no stale build/ of the shared tree, nothing written into it
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for folder in set(FOLDERS.values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("fptt_edge-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    missing = sorted(set(shipped_files()) - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"fptt_edge"}
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fptt-edge = fptt_edge.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    site = str(tmp_path / "site")
    code = f"""
import importlib, pkgutil, sys
sys.path.insert(0, {site!r})
import fptt_edge
names = [m.name for m in pkgutil.walk_packages(fptt_edge.__path__, "fptt_edge.") if not m.name.endswith("__main__")]
for name in names:
    module = importlib.import_module(name)
    assert module.__file__.startswith({site!r}), (name, module.__file__)
print(" ".join(names))
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = {p.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for p in shipped_files() if p.endswith(".py")}
    assert set(proc.stdout.split()) == modules - {"fptt_edge", "fptt_edge.__main__"}
