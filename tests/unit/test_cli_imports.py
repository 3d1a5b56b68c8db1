"""The command line imports a command's module only when that command runs."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from layerfs.cli.main import COMMAND_MODULES

# What only the store, image and registry commands need.
HEAVY = ("httpx", "rich", "layerfs.store", "layerfs.registry", "layerfs.cli.images")


def test_command_table_names_every_command_of_its_module() -> None:
    for module in set(COMMAND_MODULES.values()):
        names = {command.name for command in importlib.import_module(module).COMMANDS}
        assert names == {name for name, m in COMMAND_MODULES.items() if m == module}


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return {
        name for name in out.stdout.split() if name.split(".")[0] in ("httpx", "rich", "layerfs")
    }


def test_the_entry_point_imports_no_command_module() -> None:
    loaded = _imported_after("import layerfs.cli.main")
    assert not {m for m in loaded if m.startswith(HEAVY)}
    assert not set(COMMAND_MODULES.values()) & loaded


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from layerfs.cli.main import main; main()", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    listed = {line.split()[0] for line in out.stdout.split("Commands:")[1].splitlines() if line}
    assert listed == set(COMMAND_MODULES)


def test_a_dropin_mount_call_does_not_load_click(tmp_path: Path) -> None:
    """podman and mount(8) start every mount as a drop-in call; click is not on that path
    (it is a fifth of a mount's start). The call fails here (no such lower), after the
    whole drop-in path ran."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('click' in sys.modules))\n"
        f"sys.argv = ['layerfs', '-o', 'lowerdir={tmp_path / 'none'}', '{tmp_path}']\n"
        "from layerfs.cli.main import main\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "layerfs:" in out.stderr
    assert out.stdout.strip() == "False"
