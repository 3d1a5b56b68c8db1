"""The rings of docs/design.md, checked: dependencies point inward only.

Imports are read from the source (every ``import``, ``from ... import`` at any depth,
relative ones resolved, and ``importlib.import_module("literal")``), so an import inside a
function or under ``TYPE_CHECKING`` counts too. Each rule is also checked against a module
written to break it, so a rule that can no longer fail is noticed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_FORBIDDEN = ("layerfs.cli", "fuse_mount", "pyfuse3", "trio")
FUSE_FORBIDDEN = ("layerfs.store", "layerfs.registry", "layerfs.lazy", "layerfs.cli")
# The pyfuse3 adapter: the one place that speaks pyfuse3's FUSEError.
PYFUSE3_ADAPTER = (
    "fuse_mount/operations.py",
    "fuse_mount/loop.py",
    "fuse_mount/pyfuse3_session.py",
)


def _defines_commands(path: Path) -> bool:
    """Whether *path* is a subcommand module: it assigns ``COMMANDS`` at module level."""
    tree = ast.parse(path.read_text())
    targets = [t for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
    return any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in targets)


def module_name(path: Path) -> str:
    """``layerfs/cli/mount.py`` -> ``layerfs.cli.mount``; an ``__init__`` is its package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module *source* (the text of *module*) imports, as absolute dotted names."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
        elif _is_import_module_call(node):
            assert isinstance(node, ast.Call)
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.add(argument.value)
    return found


def _absolute(name: str | None, level: int, package: str) -> str:
    if level == 0:
        return name or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _is_import_module_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "import_module"


def violations(
    files: Iterable[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    """``path: module`` for each import of a *forbidden* module (or a submodule of one)."""
    found = []
    for path in sorted(files):
        module = module_name(path)
        for name in sorted(imports_of(path.read_text(), module, path.name == "__init__.py")):
            if _within(name, forbidden) and not _within(name, allowed):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def core_files() -> list[Path]:
    """Everything in ``layerfs/`` outside ``layerfs/cli/``."""
    cli = ROOT / "layerfs" / "cli"
    return [p for p in (ROOT / "layerfs").rglob("*.py") if cli not in p.parents]


def fuse_files() -> list[Path]:
    return list((ROOT / "fuse_mount").rglob("*.py"))


def command_files() -> list[Path]:
    """The subcommand modules (``main.py`` gathers them); each imports shared helpers only."""
    return sorted(p for p in (ROOT / "layerfs" / "cli").glob("*.py") if _defines_commands(p))


def command_modules() -> tuple[str, ...]:
    return tuple(module_name(p) for p in command_files())


# -- the rules -------------------------------------------------------------------------------


def test_core_never_imports_the_cli_fuse_pyfuse3_or_trio() -> None:
    assert violations(core_files(), CORE_FORBIDDEN) == []


def test_fuse_mount_never_imports_the_store_the_registry_or_the_cli() -> None:
    assert violations(fuse_files(), FUSE_FORBIDDEN) == []


def test_fuse_error_only_in_the_pyfuse3_adapter() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in [*core_files(), *fuse_files(), *(ROOT / "layerfs" / "cli").rglob("*.py")]
        if "FUSEError" in p.read_text()
    ]
    assert users != [], "the pyfuse3 adapter translates errors into FUSEError"
    assert set(users) <= set(PYFUSE3_ADAPTER), users


def test_command_modules_never_import_each_other() -> None:
    commands = command_modules()
    assert "layerfs.cli.mount" in commands and "layerfs.cli.images" in commands
    others = [p for p in (ROOT / "layerfs" / "cli").glob("*.py") if p.name != "main.py"]
    assert violations(others, commands) == []


def test_fuse_mount_loads_neither_store_nor_registry() -> None:
    """Transitively, at run time: every module of fuse_mount imported in a fresh interpreter."""
    modules = sorted(module_name(p) for p in fuse_files())
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({FUSE_FORBIDDEN!r}) or m == 'httpx'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_mount_command_loads_neither_store_nor_httpx() -> None:
    code = (
        "import sys\nimport layerfs.cli.mount, layerfs.cli.dropin, layerfs.cli.mount_helper\n"
        "print(sorted(m for m in sys.modules if m.startswith(('layerfs.store', 'layerfs.registry',"
        " 'httpx', 'rich'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_root_option_names_the_stores_variable() -> None:
    from layerfs.cli import common
    from layerfs.store import store

    assert common.ROOT_ENV == store.ROOT_ENV


# -- each rule fails when broken ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "module", "forbidden"),
    [
        ("from layerfs.cli.common import open_store\n", "layerfs.tar.apply", CORE_FORBIDDEN),
        ("def f():\n    import trio\n", "layerfs.store.blobs", CORE_FORBIDDEN),
        ("from ..cli import main\n", "layerfs.store.store", CORE_FORBIDDEN),
        (
            "import importlib\nimportlib.import_module('fuse_mount.daemon')\n",
            "layerfs.x",
            CORE_FORBIDDEN,
        ),
        ("from layerfs.store.store import Store\n", "fuse_mount.daemon", FUSE_FORBIDDEN),
        ("from layerfs import registry\n", "fuse_mount.options", FUSE_FORBIDDEN),
        ("from .images import open_store\n", "layerfs.cli.mount", ("layerfs.cli.images",)),
    ],
)
def test_a_forbidden_import_is_found(source: str, module: str, forbidden: tuple[str, ...]) -> None:
    found = {n for n in imports_of(source, module) if _within(n, forbidden)}
    assert found, source


def test_allowed_imports_are_not_flagged() -> None:
    source = "from layerfs.errors import oserror\nfrom . import whiteout\nimport trio_helper\n"
    assert not {n for n in imports_of(source, "layerfs.stack") if _within(n, CORE_FORBIDDEN)}
    assert imports_of("from . import common\n", "layerfs.cli", is_package=True) >= {
        "layerfs.cli.common"
    }


def test_violations_reads_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "layerfs" / "tar" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from fuse_mount import daemon\nfrom pyfuse3 import FUSEError\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations([bad], CORE_FORBIDDEN) == [
        "layerfs/tar/bad.py: fuse_mount",
        "layerfs/tar/bad.py: fuse_mount.daemon",
        "layerfs/tar/bad.py: pyfuse3",
        "layerfs/tar/bad.py: pyfuse3.FUSEError",
    ]
