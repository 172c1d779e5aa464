"""agent.deferred: a module imported on first use stays unloaded until then, and is the real one after."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import deferred

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package ``h1pkg`` whose submodule ``heavy`` counts how often its body ran."""
    root = tmp_path / "h1pkg"
    root.mkdir()
    (root / "__init__.py").write_text("RUNS = []\n")
    (root / "heavy.py").write_text("import h1pkg\nh1pkg.RUNS.append(1)\nVALUE = 42\ndef f():\n    return VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [n for n in sys.modules if n == "h1pkg" or n.startswith("h1pkg.")]:
        del sys.modules[name]


def test_deferred_module_runs_only_on_first_attribute(pkg: Path) -> None:
    import h1pkg

    deferred.defer("h1pkg.heavy")
    import h1pkg.heavy  # the import statement alone must not load it (LazyLoader would)
    from h1pkg import heavy

    assert h1pkg.RUNS == []
    assert heavy.VALUE == 42  # first attribute: the real module runs, once
    assert h1pkg.heavy.f() == 42
    assert h1pkg.RUNS == [1]
    assert sys.modules["h1pkg.heavy"] is h1pkg.heavy  # the parent and sys.modules hold the real module
    assert type(sys.modules["h1pkg.heavy"]).__name__ == "module"
    with pytest.raises(AttributeError):
        heavy.missing  # noqa: B018 — a missing name is still an AttributeError, not a reload


def test_defer_leaves_an_imported_module_alone(pkg: Path) -> None:
    import h1pkg.heavy

    deferred.defer("h1pkg.heavy")
    assert sys.modules["h1pkg.heavy"] is h1pkg.heavy
    assert type(h1pkg.heavy).__name__ == "module"


def test_agent_does_not_load_what_it_never_uses_at_idle() -> None:
    """The footprint fix holds: the agent's modules load neither http.client/email (paho's proxy lookup) nor
    msgspec.inspect, and both work as before on first use."""
    code = textwrap.dedent("""
        import sys
        import agent.cli, agent.service
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("email", "http"))
        print(",".join(loaded), type(sys.modules["msgspec.inspect"]).__name__)
        import urllib.request
        import msgspec
        class S(msgspec.Struct):
            a: int
        assert urllib.request.getproxies is not None  # first use loads the real module
        assert msgspec.json.schema(S)["$defs"]["S"]["required"] == ["a"]
        print("email" in sys.modules, type(msgspec.inspect.type_info(S)).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    first, second = out.stdout.splitlines()
    assert first == " _Deferred"
    assert second == "True StructType"


def test_serve_reads_its_command_line_without_argparse_and_defers_bz2_lzma(tmp_path: Path) -> None:
    """The systemd unit's ``serve --config FILE`` is read without argparse (gettext, textwrap: ~0.35 MB kept
    for ever); bz2/lzma (shutil's archive formats) load on first use and then work."""
    code = textwrap.dedent("""
        import sys
        from agent import cli
        import shutil, tarfile
        seen = []
        cli._load_and = lambda config, cmd, user: seen.append((config, cmd, user, "argparse" in sys.modules)) or 0
        for argv in (["serve", "--config", "/etc/a.yaml"], ["serve", "-c", "/etc/a.yaml"],
                     ["serve", "--config=/etc/a.yaml"]):
            assert cli.main(argv) == 0
        print(seen, sorted(type(sys.modules[m]).__name__ for m in ("bz2", "lzma")))
        # anything else is argparse's: options it knows, abbreviations, errors
        cli.main(["serve", "--conf", "/etc/b.yaml"])
        print(seen[-1])
        try:
            cli.main(["serve", "--config"])
        except SystemExit as e:
            print("exit", e.code)
        shutil.make_archive(sys.argv[1] + "/a", "bztar", root_dir=sys.argv[1] + "/d")
        shutil.make_archive(sys.argv[1] + "/a", "xztar", root_dir=sys.argv[1] + "/d")
        print(sorted(tarfile.open(sys.argv[1] + "/a.tar.bz2").getnames()),
              sorted(tarfile.open(sys.argv[1] + "/a.tar.xz").getnames()))
    """)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str([("/etc/a.yaml", "serve", None, False)] * 3) + " ['_Deferred', '_Deferred']"
    assert lines[1] == str(("/etc/b.yaml", "serve", None, True))
    assert lines[2] == "exit 2" and "expected one argument" in out.stderr
    assert lines[3] == "['.', './f'] ['.', './f']"
