"""The protocol registry. A protocol is one file, `rotelab/protocols/<name>.py`, that calls `register`
with a Protocol; the CLI, sweeps, reports, plots, studies and the noise ramp's source check loop over
the registry and name no protocol themselves.

Protocol files import torch (engine, models, data) inside their functions, not at the top, so that
the registry, plots and reports of finished runs work without importing it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError
from .registries import Registry


@dataclass(frozen=True)
class Protocol:
    name: str
    config: type                       # the config dataclass (every field a CLI flag and a sweep axis)
    help: str                          # one line, for `rotelab --help`
    start: Callable                    # start(cfg, out, overwrite=False, keep_existing=False, **inputs) -> list[RunDir]
                                       #   new run(s) in out; keep_existing resumes or skips runs already there
    build_loop: Callable | None = None  # build_loop(cfg, run, state) -> Loop: resumes one run directory
    resume_folder: Callable | None = None  # resume_folder(out) -> list[RunDir], where out holds several runs
                                           #   (default: resume each run directory in out)
    description: str = ""
    summarize: Callable | None = None  # summarize(run, cfg=None) -> dict, stored in status.json at the end
    trains: bool = True                # its runs hold trained networks (a noise ramp may start from them)
    sweepable: bool = True             # a sweep file may name it
    stackable: bool = False            # sweep --vectorize-seeds may train its points as one stack (one run per point)
    runs_per_point: Callable | None = None   # runs_per_point(cfg) -> how many run dirs `start` makes (default 1)
    add_arguments: Callable | None = None    # add_arguments(parser): its own CLI arguments beyond the config
    inputs: Callable | None = None           # inputs(args) -> extra keyword arguments of start (e.g. source runs)
    cli_start: Callable | None = None        # cli_start(args) -> list[RunDir] or None: a special way to start
    figures: Callable | None = None          # figures(run) -> [Path]: a run's own figures beyond the curves
    group_figures: Callable | None = None    # group_figures([folder]) -> [Path]: figures of output folders
    report_section: Callable | None = None   # report_section([RunDir], folder) -> [(title, Path)]
    report_lines: Callable | None = None     # report_lines(run) -> [str]: what the command prints for a finished
                                             #   run beyond its state and accuracies
    cli_skip: tuple = ()                     # config fields that get no flag (set from other arguments)
    ramp_data: Callable | None = None        # ramp_data(cfg) -> Data: what a noise ramp of its runs
                                             #   evaluates (default: rotelab.data.load_data(cfg))
    study_figures: dict = field(default_factory=dict)   # kind -> figure(ctx, step, **args) -> [Path]: what a
                                             #   study file's [[figures]] may name (ctx: reproduce.Context)
    study_checks: dict = field(default_factory=dict)    # kind -> check(ctx, step, **args) -> (value, expected,
                                             #   pass or None for reported): what [[checks]] may name
    example: Callable | None = None          # example(tmp) -> (config fields, extra CLI args): a run of a few
                                             #   seconds, for the conformance tests every protocol gets

    def expected_runs(self, cfg) -> int:
        return self.runs_per_point(cfg) if self.runs_per_point else 1


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


def read_run_config(run):
    """A run's saved config as its protocol's config object."""
    return protocol_of(run).config.from_dict(run.read_config())
