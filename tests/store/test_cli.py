"""The images and containers commands, driven through click's test runner."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from layerfs.cli.group import cli

from .builders import BASE, TOP, Image, write_oci_layout

COMMANDS = [
    "images", "tag", "rmi", "inspect", "import", "export", "unpack", "squash",
    "create", "ps", "rm", "diff", "commit", "bundle",
]  # fmt: skip
Invoke = Callable[..., str]


@pytest.fixture
def run(tmp_path: Path) -> Invoke:
    runner = CliRunner()
    root = str(tmp_path / "store")

    def invoke(*args: str, ok: bool = True) -> str:
        command = args[0].split()  # "volume ls": a subcommand of a group
        result = runner.invoke(cli, [*command, "--root", root, *args[1:]], catch_exceptions=False)
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    return invoke


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "--root" in result.output


def test_image_commands(run: Invoke, tmp_path: Path) -> None:
    invoke = run
    write_oci_layout(tmp_path / "src", [Image("app:1", [BASE, TOP])])
    out = invoke("import", str(tmp_path / "src"))
    digest = out.split()[0]
    assert out.split()[1] == "app:1"
    invoke("tag", "app:1", "app:2")
    rows = json.loads(invoke("images", "--format", "json"))
    assert [(r["repository"], r["tag"], r["id"]) for r in rows] == [
        ("app", "1", digest),
        ("app", "2", digest),
    ]
    table = invoke("images")
    assert table.splitlines()[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"]
    assert digest[7:19] in table
    info = json.loads(invoke("inspect", "app:2"))
    assert info["Id"] == digest and "Manifest" in info and "Config" in info
    invoke("export", "app:1", str(tmp_path / "out.tar"), "--format", "docker-archive")
    invoke("export", "app:1", str(tmp_path / "layout"))
    assert (tmp_path / "layout" / "index.json").is_file()
    invoke("unpack", "app:1", str(tmp_path / "rootfs"))
    assert (tmp_path / "rootfs" / "etc" / "motd").read_bytes() == b"hello\n"
    assert invoke("rmi", "app:2") == "Untagged: app:2\n"
    out = invoke("rmi", "app:1")
    assert f"Deleted: {digest}" in out
    assert json.loads(invoke("images", "--format", "json")) == []
    assert "no such image" in invoke("rmi", "app:1", ok=False)
    assert "invalid" in invoke("inspect", "UPPER", ok=False)


@pytest.mark.root
def test_container_commands(run: Invoke, tmp_path: Path) -> None:
    invoke = run
    write_oci_layout(tmp_path / "src", [Image("app:1", [BASE, TOP])])
    invoke("import", str(tmp_path / "src"))
    container_id = invoke("create", "app:1", "--name", "box").strip()
    rows = json.loads(invoke("ps", "--format", "json"))
    assert [(r["id"], r["name"], r["image_ref"]) for r in rows] == [(container_id, "box", "app:1")]
    assert "box" in invoke("ps")
    upper = Path(rows[0]["path"]) / "upper"
    (upper / "etc").mkdir()
    (upper / "etc" / "new").write_text("x")
    os.mknod(upper / "etc" / "motd", stat.S_IFCHR, 0)
    assert invoke("diff", "box").splitlines() == ["C /etc", "D /etc/motd", "A /etc/new"]
    digest = invoke("commit", "box", "app:2", "--compression", "gzip", "-m", "hi").strip()
    info = json.loads(invoke("inspect", "app:2"))
    assert info["Id"] == digest
    assert info["Config"]["history"][-1]["comment"] == "hi"
    assert info["Manifest"]["layers"][-1]["mediaType"].endswith("tar+gzip")
    invoke("squash", "app:2", "flat:1")
    invoke("unpack", "flat:1", str(tmp_path / "flat"))
    assert (tmp_path / "flat" / "etc" / "new").read_text() == "x"
    assert invoke("rm", "box") == "box\n"
    assert json.loads(invoke("ps", "--format", "json")) == []
    assert "no such container" in invoke("diff", "box", ok=False)


@pytest.mark.parametrize("command", ["create", "ls", "inspect", "rm", "prune"])
def test_volume_help(command: str) -> None:
    result = CliRunner().invoke(cli, ["volume", command, "--help"])
    assert result.exit_code == 0 and "--root" in result.output


def test_volume_commands(run: Invoke, tmp_path: Path) -> None:
    invoke = run

    def volume(*args: str, ok: bool = True) -> str:
        return invoke(f"volume {args[0]}", *args[1:], ok=ok)

    volumes = {"Volumes": {"/var/cache": {}}}
    write_oci_layout(tmp_path / "src", [Image("app:1", [BASE, TOP], settings=volumes)])
    invoke("import", str(tmp_path / "src"))
    assert volume("create", "db", "--label", "tier=gold", "--label", "x") == "db\n"
    assert "already exists" in volume("create", "db", ok=False)
    assert "invalid volume name" in volume("create", "b@d", ok=False)
    assert "invalid label" in volume("create", "v2", "--label", "=x", ok=False)
    invoke("create", "app:1", "--name", "box", "-v", "db:/srv/db:ro", "-v", "/data")
    rows = {r["name"]: r for r in json.loads(volume("ls", "--format", "json"))}
    assert rows["db"]["labels"] == {"tier": "gold", "x": ""}
    assert rows["db"]["containers"] == ["box"] and not rows["db"]["anonymous"]
    anonymous = sorted(name for name, row in rows.items() if row["anonymous"])
    assert len(anonymous) == 2 and all(rows[n]["containers"] == ["box"] for n in anonymous)
    table = volume("ls").splitlines()
    assert table[0].split()[:2] == ["VOLUME", "NAME"] and len(table) == 4
    assert sorted(volume("ls", "-q").split()) == sorted(rows)
    (inspected,) = json.loads(volume("inspect", "db"))
    assert inspected == rows["db"] and Path(inspected["path"]).is_dir()
    mounts = json.loads(invoke("ps", "--format", "json"))[0]["mounts"]
    assert [(m["source"], m["target"], m["readonly"]) for m in mounts[:1]] == [
        ("db", "/srv/db", True)
    ]
    # one-line errors, nothing changed
    out = volume("rm", "db", ok=False)
    assert out == "layerfs: volume db is in use by container box\n"
    out = invoke("create", "app:1", "-v", "db:relative", ok=False)
    assert out == "layerfs: volume target 'relative' is not an absolute path\n"
    assert "No such file" in invoke("create", "app:1", "-v", "/no/such/dir:/x", ok=False)
    assert len(json.loads(invoke("ps", "--format", "json"))) == 1
    assert volume("prune") == ""  # every volume is in use
    assert invoke("rm", "-v", "box") == "box\n"
    assert sorted(volume("ls", "-q").split()) == ["db"]
    assert volume("prune") == ""  # named volumes only with --all
    assert volume("prune", "--all") == "db\n"
    assert volume("ls", "-q") == ""


def test_import_picks_an_image_by_its_layout_tag(run: Invoke, tmp_path: Path) -> None:
    """`layerfs import DIR:REFNAME NAME[:TAG]`, like skopeo's `oci:DIR:REFNAME`."""
    invoke = run
    colon = tmp_path / "with:colon"
    write_oci_layout(colon, [Image("v1", [BASE]), Image("v2", [BASE, TOP])])
    out = invoke("import", str(colon))
    assert [line.split()[1] for line in out.splitlines()[:2]] == ["<none>", "<none>"]
    assert "name one with `layerfs import" in out  # the hint (stderr, mixed in by the runner)
    out = invoke("import", f"{colon}:v2", "app:2")
    assert out.split()[1] == "app:2"
    out = invoke("import", f"{colon}:v1", "app")
    assert out.split()[1] == "app:latest"
    assert "no image named 'v3'" in invoke("import", f"{colon}:v3", "app", ok=False)
    assert "a name needs one" in invoke("import", str(colon), "app", ok=False)
    assert "no such file" in invoke("import", str(tmp_path / "missing:v1"), ok=False)
    rows = json.loads(invoke("images", "--format", "json"))  # tags replaced the untagged
    assert sorted((r["repository"], r["tag"]) for r in rows) == [("app", "2"), ("app", "latest")]
