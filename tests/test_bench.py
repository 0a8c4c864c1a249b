"""Every bench script runs in --quick mode and prints its JSON line (no timing is asserted: a bench
that breaks fails the suite, a slow machine does not)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_bench_has_its_figures_on_the_speed_page():
    speed = (BENCH.parent / "docs" / "speed.md").read_text()
    assert SCRIPTS and [s for s in SCRIPTS if f"bench/{s}.py" not in speed] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_quick(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    figures = load(name).main(["--quick"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(figures)) and figures
