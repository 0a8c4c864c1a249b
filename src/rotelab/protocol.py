"""The protocol registry. A protocol is one file, `rotelab/protocols/<name>.py`, that calls `register`
with a Protocol; the CLI, sweeps, reports, plots, studies and the noise ramp's source check loop over
the registry and name no protocol themselves.

Protocol files import torch (engine, models, data) inside their functions, not at the top, so that
the registry, plots and reports of finished runs work without importing it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ConfigError
from .config import Config
from .registry import Registry


# Signatures (types from modules that import this one are named in words: no import circle)
PlanFn = Callable[..., Any]                          # plan(cfg, out: Path, **inputs) -> plan.Plan
BuildLoopFn = Callable[..., Any]                     # build_loop(cfg, RunDir, state=None) -> engine.Loop
ExampleFn = Callable[[Path], tuple[dict, list]]      # example(tmp) -> (config fields, extra CLI args)
SummarizeFn = Callable[..., Optional[dict]]          # summarize(run, cfg=None) -> dict for status.json
FigureFn = Callable[..., list[Path]]                 # figure(ctx, step, **args) -> [Path]
CheckFn = Callable[..., Any]   # check(ctx, step, **args) -> CheckResult, or (value, expected, pass or None)


@dataclass(frozen=True)
class CheckResult:
    """A study check's outcome: the value in words, what was expected (with its source), whether it
    passed (None: reported, not judged), and the numbers it read (results.json stores them as JSON
    numbers, so that a result can be compared across versions and plotted again without the runs):
    each number with its n and its interval's kind where it is a mean."""
    value: str
    expected: str
    passed: bool | None
    numbers: dict = field(default_factory=dict)

    def __iter__(self):   # unpacks, and indexes, as the (value, expected, pass) of a check that returns words only
        return iter((self.value, self.expected, self.passed))

    def __getitem__(self, i):
        return (self.value, self.expected, self.passed)[i]


@dataclass(frozen=True)
class Folder:
    """A protocol whose output is a folder of runs (seeds of an information plane, noise ramps)."""
    figures: Callable[[list[Path]], list[Path]] | None = None   # figures of whole output folders
    legacy_plan: Callable[[Path], Any] | None = None         # the plan.Plan of a folder made before plan.json
    summary_lines: Callable[[Path], list[str]] | None = None  # what the command prints for the folder
                                                              #   (instead of a line per run)
    per_example: Callable[[Path], Any] | None = None   # the folder's per-example table (a DataFrame)


@dataclass(frozen=True)
class Derived:
    """A protocol whose runs are made from other runs (a noise ramp over trained runs): the command
    takes those runs as arguments, and sweeps do not run it (a study step names its sources)."""
    add_arguments: Callable[[argparse.ArgumentParser], None]    # its own CLI arguments beyond the config
    inputs: Callable[[argparse.Namespace], dict]                # inputs(args) -> keyword arguments of plan
    cli_skip: tuple[str, ...] = ()                              # config fields set from the inputs (no flag)


@dataclass(frozen=True)
class StudyParts:
    """What a study file's [[figures]] and [[checks]] may name, and a report's section of its runs."""
    figures: dict[str, FigureFn] = field(default_factory=dict)
    checks: dict[str, CheckFn] = field(default_factory=dict)
    report_section: Callable[[list, Path], list[tuple[str, Path]]] | None = None   # ([RunDir], folder)
    # a study file beside the protocol whose FIGURES and CHECKS are added to these, imported by name
    # when a study first reads them: it may import its protocol, which does not import it
    module: str | None = None

    def tables(self) -> tuple[dict[str, FigureFn], dict[str, CheckFn]]:
        """Every figure and check by kind, the study file's included."""
        if self.module is None:
            return self.figures, self.checks
        own = importlib.import_module(self.module)
        return {**self.figures, **own.FIGURES}, {**self.checks, **own.CHECKS}


@dataclass(frozen=True)
class Protocol:
    """A protocol: the parts every one has, then optional parts, each typed."""
    name: str
    config: type[Config]               # the config dataclass (every field a CLI flag and a sweep axis)
    help: str                          # one line, for `rotelab --help`
    plan: PlanFn                       # the runs a config makes in `out` (rotelab.plan)
    build_loop: BuildLoopFn            # one run's training loop, from scratch or from a checkpoint's state
    example: ExampleFn                 # a run of a few seconds: the conformance tests run every protocol's
    description: str = ""
    summarize: SummarizeFn | None = None     # stored in status.json when a run ends
    report_lines: Callable[[Any], list[str]] | None = None   # what the command prints for a finished run
    figures: Callable[[Any], list[Path]] | None = None       # a run's own figures beyond the curves
    config_from_args: Callable[[argparse.Namespace], Any] | None = None   # a config the flags alone do not
                                       #   give (forget --stage2-from: the source run's, with stage-2 flags)
    trains: bool = True                # its runs hold trained networks (a noise ramp may start from them)
    stackable: bool = False            # sweep --vectorize-seeds may train its points as one stack
    ramp_data: Callable[[Any], Any] | None = None   # what a noise ramp of its runs evaluates (default: load_data)
    tables: dict[str, Callable[..., Any]] = field(default_factory=dict)   # per-run tables, read as
                                       #   rotelab.load(run).table(name, **kw): fn(runs.Run, **kw) -> DataFrame
    examples_summary: Callable[[Any], dict] | None = None   # entries it adds to `rotelab examples`' summary
    folder: Folder | None = None
    derived: Derived | None = None
    study: StudyParts = field(default_factory=StudyParts)

    @property
    def sweepable(self) -> bool:
        return self.derived is None


PROTOCOLS = Registry("protocol", "protocol")
register = PROTOCOLS.register   # `PROTOCOL = register(Protocol(...))`: adds (or replaces) it and returns it
_loaded = False


def load_protocols() -> dict[str, Protocol]:
    """Import every module of rotelab.protocols (each registers itself) once; returns the registry."""
    global _loaded
    if not _loaded:
        from . import protocols
        for mod in pkgutil.iter_modules(protocols.__path__):
            importlib.import_module(f"{protocols.__name__}.{mod.name}")
        _loaded = True
    return PROTOCOLS


def get_protocol(name: str, where: str = "protocol") -> Protocol:
    protocols = load_protocols()
    if name not in protocols:
        raise ConfigError(where, f"unknown protocol {name!r}; use one of {', '.join(sorted(protocols))}")
    return protocols[name]


def protocol_of(run) -> Protocol:
    """The protocol that made a run directory."""
    from .store import RunDir, StoreError
    run = run if isinstance(run, RunDir) else RunDir(run)
    name = run.read_protocol()
    if name not in load_protocols():
        raise StoreError(run.path, f"{run.path} was made by protocol {name!r}, which this rotelab does not know")
    return PROTOCOLS[name]
