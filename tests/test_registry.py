"""The protocol registry: a protocol defined here, in a test file, gets a CLI command, sweep support and
a report section with no edit anywhere else; plotting finished runs needs no torch."""

import ast
import subprocess
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from rotelab.cli import main
from rotelab.config import ConfigError, FitConfig, opt
from rotelab.hook import Hook
from rotelab.plan import one_run
from rotelab.training import build_fit_loop
from rotelab.protocol import PROTOCOLS, Protocol, StudyParts, load_protocols, register
from rotelab.store import RunDir


@dataclass
class CountConfig(FitConfig):
    """A toy protocol, defined in this file alone: a small fit whose epochs also count."""
    steps: int = opt(3, "how many epochs to count")
    start: float = opt(0.0, "first value")

    def validate(self):
        super().validate()
        if self.steps < 1:
            raise ConfigError("--steps", f"must be >= 1, got {self.steps}")
        return self


class Count(Hook):
    def __init__(self, cfg):
        self.cfg = cfg

    def on_epoch_end(self, loop, result):
        result.metrics["value"] = self.cfg.start + result.epoch + self.cfg.seed


def count_loop(cfg, run, state=None):
    small = dataclasses.replace(cfg, epochs=cfg.steps, dataset="digits", widths=[8], subset=200,
                                hist_every=0, checkpoint_every=0, progress=False)
    return build_fit_loop(small, run, state, own_hooks=lambda data: [Count(cfg)])


def count_example(tmp):
    return dict(steps=2), []


def count_section(runs, folder):
    from rotelab.plots import plt, save_figure
    fig, ax = plt.subplots()
    for r in runs:
        m = r.read_metrics()
        ax.plot([x["epoch"] for x in m], [x["value"] for x in m])
    return [("all counts", save_figure(fig, Path(folder) / "counts.png"))]


@pytest.fixture
def count_protocol():
    load_protocols()
    proto = register(Protocol(name="count", config=CountConfig, help="count epochs",
                              plan=lambda cfg, out: one_run("count", cfg, out), build_loop=count_loop,
                              example=count_example, study=StudyParts(report_section=count_section)))
    yield proto
    PROTOCOLS.pop("count")


def test_registry_lists_the_shipped_protocols():
    assert {"fit", "forget", "infoplane", "noise"} <= set(load_protocols())
    for proto in load_protocols().values():   # every protocol is complete enough for every entry point
        cfg = proto.config.from_dict({})
        assert proto.config.from_dict(cfg.validate().to_dict()) == cfg   # its defaults validate and round-trip
        assert callable(proto.plan) and callable(proto.build_loop) and callable(proto.example) and proto.help


def test_a_protocol_in_a_test_file_gets_cli_sweep_and_report(count_protocol, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["count", "--steps", "4", "--start", "10", "--out", str(out)]) == 0
    assert [m["value"] for m in RunDir(out).read_metrics()] == [11, 12, 13, 14]
    assert main(["count", "--steps", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--steps: must be >= 1" in capsys.readouterr().err
    sweep_file = tmp_path / "grid.toml"
    sweep_file.write_text(f'protocol = "count"\nout = "{tmp_path / "grid"}"\n[base]\nsteps = 2\n[axes]\nseed = [0, 5]\n')
    assert main(["sweep", str(sweep_file), "--jobs", "1"]) == 0
    assert RunDir(tmp_path / "grid" / "seed-5").read_metrics()[-1]["value"] == 7
    assert main(["report", str(tmp_path / "grid"), "--out", str(tmp_path / "rep.html")]) == 0
    page = (tmp_path / "rep.html").read_text()
    assert "count: all counts" in page and (tmp_path / "rep_figures" / "counts.png").is_file()


def test_plotting_a_finished_run_does_not_import_torch(tmp_path, small_cfg):
    from rotelab.protocols.fit import fit
    fit(small_cfg(epochs=2), tmp_path / "run")
    code = ("import sys\nfrom rotelab.cli import main\n"
            f"assert main(['plot', {str(tmp_path / 'run')!r}]) == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "figures" / "curves.png").is_file()


def import_graph() -> dict[str, set[str]]:
    """module -> the rotelab modules it imports, anywhere in it (inside functions too; not under
    `if TYPE_CHECKING`); importing a.b.c imports the packages a.b too."""
    src = Path(__file__).resolve().parents[1] / "src"
    paths = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (src / "rotelab").rglob("*.py")}
    graph = {}
    for mod, path in paths.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()

        def walk(node):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                return
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
                deps.update([target, *(f"{target}.{a.name}" for a in node.names)])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rotelab"):
                deps.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("rotelab"))
            for child in ast.iter_child_nodes(node):
                walk(child)
        walk(ast.parse(path.read_text()))
        for d in list(deps):   # the packages on the way (not the top one, which holds everything)
            parts = d.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts)))
        graph[mod] = {d for d in deps if d in paths and d != mod and not mod.startswith(d + ".")}
    return graph


def test_nothing_below_protocols_depends_on_a_protocol():
    graph = import_graph()
    below = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in ("engine", "hooks", "hook", "store", "runs", "config", "plots", "analysis",
                                                     "seeding", "vectorized", "models", "data", "measures", "spec", "training",
                                                     "errors", "registry")]
    for mod in below:
        seen, todo = set(), [mod]
        while todo:   # everything it imports, directly or not
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        assert not [d for d in seen if d.startswith("rotelab.protocols.")], f"{mod} depends on a protocol"
    assert "rotelab.training" in graph["rotelab.protocols.forget"]   # the graph sees imports at all


def test_store_errors_are_neutral_and_the_cli_names_the_option(tmp_path, small_cfg, capsys):
    from rotelab.protocols.fit import fit
    run = fit(small_cfg(epochs=2), tmp_path / "run")
    assert main(["fit", "--resume", str(run.path)]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out
    run.write_status("running")   # as if killed before its final status
    (run.path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    before = (run.path / "status.json").read_text()
    assert main(["fit", "--resume", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rotelab: error: --resume: checkpoint ") and "unreadable" in err
    assert (run.path / "status.json").read_text() == before   # nothing rewritten


def test_load_gives_tables_and_arrays_for_a_notebook(tmp_path, small_cfg):
    import numpy as np
    import rotelab
    from rotelab.measures.examples import unpack
    from rotelab.protocols.fit import fit
    fit(small_cfg(epochs=3), tmp_path / "a")
    fit(small_cfg(epochs=2, seed=1), tmp_path / "b")
    run = rotelab.load(tmp_path / "a")
    assert run.protocol == "fit" and run.config["epochs"] == 3 and run.status["state"] == "done"
    assert list(run.metrics["epoch"]) == [1, 2, 3] and run.metrics["train_acc"].between(0, 1).all()
    correct = run.correct("train")
    assert correct.shape == (3, int(run.examples["n_train"]))
    assert np.array_equal(correct, unpack(run.examples["train_correct"], int(run.examples["n_train"])))
    assert abs(correct[-1].mean() - run.metrics["train_acc"].iloc[-1]) < 1e-9
    both = rotelab.load(tmp_path)
    assert sorted(r.path.name for r in both) == ["a", "b"]


def test_no_import_cycles_among_modules():
    """No cycle among rotelab's modules, counting imports inside functions (registries load their
    members by name: rotelab.protocol imports the protocols package, whose modules import it back only
    through importlib)."""
    graph = import_graph()
    state = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [])
    assert "rotelab.store" in graph["rotelab.runner"] and "rotelab.protocol" in graph["rotelab.runner"]


def test_a_model_with_a_hyperparameter_is_one_builder(tmp_path, capsys):
    """A model defined here, in a test file: its keyword-only parameter is what --model-args sets,
    `rotelab models` lists it, a run records it, and a wrong name or kind is one line naming it."""
    import torch
    from rotelab.models import MODELS
    from rotelab.store import RunDir

    @MODELS.register("toy-hidden")
    def toy(*, input_shape, num_classes, hidden: int = 8):
        n = int(torch.tensor(input_shape).prod())
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(hidden, num_classes))
    try:
        base = ["fit", "--dataset", "digits", "--model", "toy-hidden", "--epochs", "2", "--no-progress",
                "--hist-every", "0"]
        assert main([*base, "--model-args", "hidden=5", "--out", str(tmp_path / "five")]) == 0
        run = RunDir(tmp_path / "five")
        assert run.read_config()["model_args"] == {"hidden": 5}
        assert run.read_environment()["parameters"] == 64 * 5 + 5 + 5 * 10 + 10   # digits: 64 inputs, 10 classes
        assert main([*base, "--out", str(tmp_path / "default")]) == 0
        assert RunDir(tmp_path / "default").read_environment()["parameters"] == 64 * 8 + 8 + 8 * 10 + 10
        capsys.readouterr()
        assert main(["models"]) == 0 and "toy-hidden      hidden=8" in capsys.readouterr().out
        for bad, said in (("width=5", "toy-hidden takes hidden=8; got 'width'"), ("hidden=wide", "takes values like its default 8; got 'wide'")):
            assert main([*base, "--model-args", bad, "--out", str(tmp_path / "bad")]) == 2
            err = capsys.readouterr().err.strip()
            assert said in err and "--model-args" in err and len(err.splitlines()) == 1
            assert not (tmp_path / "bad").exists()
    finally:
        del MODELS["toy-hidden"]
