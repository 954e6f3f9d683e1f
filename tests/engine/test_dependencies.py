"""The engine depends on torch and ddsec's own types only (DESIGN.md, "Dependencies point one way")."""

from __future__ import annotations

import subprocess
import sys


def test_engine_imports_no_cli_or_front_end():
    code = (
        "import sys, ddsec.engine\n"
        "bad = [m for m in ('typer', 'rich', 'ddsec.cli', 'ddsec.attacks', 'ddsec.adapt', 'ddsec.distill') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_mapped_packages_import_under_ddsec():
    import ddsec.adapt
    import ddsec.attacks
    import ddsec.models_zoo

    assert ddsec.models_zoo.__name__ == "ddsec.models_zoo"
    assert ddsec.attacks.__doc__ and ddsec.adapt.__doc__


def test_every_subpackage_is_listed_for_the_wheel():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = set()
    for name, folder in config["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(root / folder).parts
            on_disk.add(".".join((name, *parts)))
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages in pyproject.toml"
