"""Every benchmark script imports: a bench is run rarely, by hand, so a renamed helper it imports
would otherwise surface only when someone needs its numbers (a moved `config_record` once did)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO

SCRIPTS = sorted((REPO / "bench").glob("*.py"))
LIBRARIES = {"speedrun_recipe"}  # imported by a script, not run


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_bench_script_imports(path, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Scripts whose dataclasses look their module up in sys.modules need the entry.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    if path.stem not in LIBRARIES:
        assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
