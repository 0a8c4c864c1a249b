"""Grids of runs: a sweep file is a protocol, a base config and axes; each point is one run directory.

    protocol = "fit"
    out = "runs/zhang-fig1"
    [base]
    dataset = "fashion-mnist"
    epochs = 100
    [axes]
    corrupt = ["labels=0.0", "labels=0.5", "labels=1.0"]
    seed = {from = 0, to = 2}          # inclusive integer range; {from, to, step} or {from, to, num} too

Points are named from their axis values (`corrupt-labels=0.5__seed-1`); each point's protocol plans
its runs in the point's folder, and plan.execute makes them: running a sweep again skips finished
points and resumes broken ones. Executors: `local` (processes, up to --jobs at a time) and `ray` (one
Ray task per run or stack, on a running cluster or a local instance).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, load_config_file
from .protocol import get_protocol


@dataclass
class Point:
    name: str
    path: Path
    values: dict      # the axis values of this point
    config: dict      # the full config fields


def axis_values(name: str, spec) -> list:
    """A list as it is, or {from, to[, step]} (inclusive integers) or {from, to, num} (evenly spaced)."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"axes.{name}", "is an empty list")
        return spec
    if isinstance(spec, dict) and {"from", "to"} <= set(spec):
        lo, hi = spec["from"], spec["to"]
        extra = set(spec) - {"from", "to", "step", "num"}
        numbers = [spec[k] for k in ("from", "to", "step", "num") if k in spec]
        if extra or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ConfigError(f"axes.{name}", f"a range is {{from, to[, step|num]}} of finite numbers, got {spec!r}")
        if "num" in spec:
            n = spec["num"]
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"axes.{name}", f"num must be a positive integer, got {n!r}")
            return [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [lo]
        step = spec.get("step", 1)
        if step <= 0 or hi < lo:
            raise ConfigError(f"axes.{name}", f"the range from {lo} to {hi} in steps of {step} yields no values; "
                                              "use from <= to and a positive step")
        if all(isinstance(v, int) for v in (lo, hi, step)):
            return list(range(lo, hi + 1, step))
        n = int(math.floor((hi - lo) / step + 1e-9)) + 1
        return [round(lo + i * step, 12) for i in range(n)]
    raise ConfigError(f"axes.{name}", f"needs a list or a table {{from, to[, step|num]}}, got {spec!r}")


def point_name(values: dict) -> str:
    def fmt(v):
        if isinstance(v, list):
            return ",".join(map(str, v))
        return str(v)
    return "__".join(f"{k}-{re.sub(r'[^A-Za-z0-9=.,+-]', '_', fmt(v))}" for k, v in values.items()) or "base"


def load_sweep(path, out: str | None = None) -> tuple[str, list[Point]]:
    """The protocol and the points of a sweep file; every point's config is validated."""
    spec = load_config_file(path)
    if not spec.get("out") and not out:
        raise ConfigError("--out", f"{path} names no `out` folder; add out = \"runs/name\" or pass --out")
    return sweep_points(spec, out)


def sweep_points(spec: dict, out=None) -> tuple[str, list[Point]]:
    """The protocol and the points of a sweep given as a dict (a sweep file's content)."""
    protocol = spec.get("protocol", "fit")
    proto = get_protocol(protocol) if isinstance(protocol, str) else None
    if proto is None or not proto.sweepable:
        raise ConfigError("protocol", f"a sweep cannot run protocol {protocol!r}; use a protocol that trains runs")
    unknown = set(spec) - {"protocol", "out", "base", "axes"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key of a sweep file; use protocol, out, base and axes")
    root = out or spec.get("out")
    if root is None:
        raise ConfigError("out", "a sweep needs a folder for its runs; give --out or `out` in the sweep file")
    cls = proto.config
    base = spec.get("base", {})
    axes = {k: axis_values(k, v) for k, v in spec.get("axes", {}).items()}
    from .config import config_spellings
    names = {f.name for f in dataclasses.fields(cls)} | config_spellings(cls)  # type: ignore[arg-type]  # every Config is a dataclass
    # An axis whose values are tables sets several fields together (a "variant"): the table's `name`
    # names the point, its other keys are config fields.
    grouped = {k for k, v in axes.items() if all(isinstance(x, dict) for x in v)}
    for k in grouped:
        for v in axes[k]:
            if "name" not in v:
                raise ConfigError(f"axes.{k}", f"each table of a variant axis needs a `name`, got {v!r}")
    fields = list(base) + [k for k in axes if k not in grouped] + \
        [f for k in grouped for v in axes[k] for f in v if f != "name"]
    for key in fields:
        if key not in names:
            raise ConfigError(key, f"is not a field of the {protocol} config; see `rotelab {protocol} --help`")
    points = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        config = dict(base)
        for k, v in values.items():
            config.update({f: x for f, x in v.items() if f != "name"} if k in grouped else {k: v})
        cls.from_dict(config).validate()
        name = point_name({k: (v["name"] if k in grouped else v) for k, v in values.items()})
        points.append(Point(name, Path(root).resolve() / name, values, config))
    if len({p.name for p in points}) != len(points):
        raise ConfigError("axes", "two points got the same name; make the axis values distinct")
    return protocol, points


def record_points(protocol: str, points: list[Point]) -> Path | None:
    """Write OUT/sweep.json: the protocol, the axes and each point's axis values (a variant axis by its
    name), so that readers (rotelab.load) know every run's axis values. Points recorded by an earlier
    sweep into the same folder are kept."""
    from .store import SWEEP_RECORD, atomic_write_json, read_json
    if not points:
        return None
    root = points[0].path.parent
    path = root / SWEEP_RECORD
    old = read_json(path) if path.is_file() else {}
    values = {p.name: {k: (v["name"] if isinstance(v, dict) else v) for k, v in p.values.items()} for p in points}
    axes = list(dict.fromkeys([*old.get("axes", []), *points[0].values]))
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"protocol": protocol, "axes": axes, "points": {**old.get("points", {}), **values}})
    return path


def point_plans(protocol: str, points: list[Point]) -> list:
    """Each point's plan (plan.Plan): what its protocol makes in the point's folder, without progress
    bars (workers share a terminal)."""
    from .plan import plan
    cls = get_protocol(protocol).config
    return [plan(protocol, cls.from_dict(quiet(cls, p.config)), p.path) for p in points]


def point_line(protocol: str, point: Point) -> str:
    """The point's state and folder, as --dry-run prints them: done, running (another process holds a
    run's lock), stale (a run made with other settings; the first field that differs), partial (has
    files: resume it) or new."""
    from .plan import described_state
    return described_state(point_plans(protocol, [point])[0])


def quiet(cls, config: dict) -> dict:
    """A point's config without a progress bar, where the config has one (workers share a terminal)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {**config, "progress": False} if "progress" in names else dict(config)


def sweep(path, out: str | None = None, executor: str = "local", jobs: int | None = None,
          address: str | None = None, cpus_per_point: float = 1, gpus_per_point: float | None = None,
          vectorize_seeds: bool = False, device: str | None = None) -> list[dict]:
    """Make every point of a sweep file (plan.execute): finished points are skipped, broken ones resumed."""
    from .plan import default_jobs, execute
    protocol, points = load_sweep(path, out)
    if device:   # where the points train (bookkeeping: a point made on another device is not stale)
        for p in points:
            p.config["device"] = device
    record_points(protocol, points)
    if executor not in ("local", "ray"):
        raise ConfigError("--executor", f"unknown executor {executor!r}; use local or ray")
    jobs = jobs or default_jobs()
    return execute(point_plans(protocol, points), executor, jobs, vectorize=vectorize_seeds, address=address,
                   cpus=cpus_per_point, gpus=gpus_per_point)
