"""The `rotelab` command. Every config field is a flag: `--batch-size` sets FitConfig.batch_size."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import ConfigError, FitConfig, ForgetConfig, InfoPlaneConfig, NoiseConfig, flag, load_config_file


def parse_ints(text: str) -> list[int]:
    if text.strip() == "":
        return []
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 512,512, got {text!r}") from None


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    if f.metadata.get("type") == "ints":
        return parse_ints
    if t.startswith("bool"):
        return bool
    if "float" in t:
        return float
    if "int" in t:
        return int
    return str


def add_config_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per dataclass field. Defaults are SUPPRESSed so that we can tell which flags the
    user gave (they override a --config file); the help text still shows the default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_ = f"{f.metadata.get('help', '')} (default: {shown})"
        kind = _field_type(f)
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if kind is bool:
            parser.add_argument(flag(f.name), *f.metadata.get("aliases", ()), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag(f.name), *f.metadata.get("aliases", ()), type=kind, choices=f.metadata.get("choices"),
                                metavar=f.name.upper() if not f.metadata.get("choices") else None, **kwargs)


def config_from_args(args: argparse.Namespace, cls):
    """defaults < --config file < flags given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls.from_dict(values)


def given_config_flags(args: argparse.Namespace, cls) -> list[str]:
    names = {f.name for f in dataclasses.fields(cls)}
    return [flag(k) for k in vars(args) if k in names]


def _report(run) -> None:
    status = run.read_status()
    final = status.get("final", {})
    line = (f"{run.path}: {status.get('state')} after {status.get('epochs_completed')} epochs; "
            + ", ".join(f"{k.replace('_', ' ')} {final[k]:.4f}" for k in ("train_acc", "val_acc", "test_acc")
                        if final.get(k) is not None))
    if status.get("fit_epoch"):
        line += f"; fit at epoch {status['fit_epoch']}"
    for split, events in status.get("summary", {}).get("collapses", {}).items():
        for e in events:
            line += f"\n  collapse of {split} at epoch {e['epoch']}: {e['before']:.3f} -> {e['lowest']:.3f}"
    print(line)


def _resume_or_out(args, cls) -> bool:
    """True for --resume (checking no new config is given with it), False for a new run in --out."""
    if args.resume:
        extra = given_config_flags(args, cls) + (["--config"] if args.config else [])
        if args.out or extra:
            raise ConfigError((["--out"] if args.out else extra)[0],
                              f"--resume continues {args.resume} with its saved config.json; drop this flag, "
                              "or start a new run with --out")
        return True
    if not args.out:
        raise ConfigError("--out", "say where the run goes, e.g. --out runs/my-run (or --resume runs/old-run)")
    return False


def cmd_fit(args) -> int:
    from .protocols import resume
    from .protocols.fit import fit
    run = resume(args.resume) if _resume_or_out(args, FitConfig) else \
        fit(config_from_args(args, FitConfig), args.out, overwrite=args.overwrite)
    _report(run)
    return 0


def cmd_forget(args) -> int:
    from .protocols import resume
    from .protocols.forget import forget, stage2_from
    if getattr(args, "stage2_from", None):
        if not args.out:
            raise ConfigError("--out", "--stage2-from starts a new run; say where with --out")
        names = {f.name for f in dataclasses.fields(ForgetConfig)}
        overrides = {k: v for k, v in vars(args).items() if k in names and k != "stage2_from"}
        run = stage2_from(args.stage2_from, args.out, overrides, overwrite=args.overwrite)
    elif _resume_or_out(args, ForgetConfig):
        run = resume(args.resume)
    else:
        run = forget(config_from_args(args, ForgetConfig), args.out, overwrite=args.overwrite)
    _report(run)
    return 0


def cmd_infoplane(args) -> int:
    from .protocols.infoplane import infoplane, seed_dirs
    from .store import RunDir
    if _resume_or_out(args, InfoPlaneConfig):
        dirs = seed_dirs(args.resume)
        if not dirs:
            raise ConfigError("--resume", f"{args.resume} has no seed-N runs; is it an infoplane output folder?")
        # every seed of the saved --seeds: finished ones stay, broken ones resume, missing ones start
        cfg = InfoPlaneConfig.from_dict(RunDir(dirs[0]).read_config())
        runs = infoplane(cfg, args.resume, keep_existing=True)
    else:
        runs = infoplane(config_from_args(args, InfoPlaneConfig), args.out, overwrite=args.overwrite)
    for run in runs:
        _report(run)
    return 0


def cmd_noise(args) -> int:
    from .protocols import resume
    from .protocols.noise import ramp, ramp_dirs, write_summary
    if args.resume:
        if args.runs or args.out or given_config_flags(args, NoiseConfig):
            raise ConfigError("--resume", f"continues {args.resume} with its saved configs; give no runs or flags with it")
        dirs = ramp_dirs(args.resume)
        if not dirs:
            raise ConfigError("--resume", f"{args.resume} holds no noise-ramp runs")
        runs = [resume(d) for d in dirs]
        print(write_summary(args.resume))
    else:
        if not args.out:
            raise ConfigError("--out", "say where the ramp goes, e.g. --out runs/ramp")
        runs = ramp(args.runs, config_from_args(args, NoiseConfig), args.out, overwrite=args.overwrite)
        print(Path(args.out) / "summary.json")
    for run in runs:
        half = run.read_status().get("summary", {}).get("half_acc")
        print(f"{run.path}: " + (f"train accuracy below half of its noise-free value at alpha {half['alpha']:.3g} "
                                  f"(epoch {half['epoch']}, log-uniform KL {half['kl_loguniform_bits']:.4g} bits)"
                                  if half else "train accuracy stayed above half of its noise-free value"))
    return 0


def cmd_sweep(args) -> int:
    from .sweep import load_sweep, point_state, sweep
    if args.dry_run:
        protocol, points = load_sweep(args.file, args.out)
        for p in points:
            print(f"{point_state(protocol, p.path):8s} {p.path}")
        print(f"{len(points)} points ({protocol})")
        return 0
    results = sweep(args.file, args.out, args.executor, args.jobs, args.address, args.cpus_per_point,
                    args.gpus_per_point, args.vectorize_seeds)
    for r in results:
        print(f"{r['state']:8s} {r['path']}" + (f"  ({r['error']})" if r.get("error") else ""))
    failed = sum(r["state"] == "failed" for r in results)
    print(f"{len(results)} points: {sum(r['state'] == 'done' for r in results)} run, "
          f"{sum(r['state'] == 'skipped' for r in results)} already done, {failed} failed")
    return 1 if failed else 0


def cmd_report(args) -> int:
    from .report import report
    written = report(args.runs, args.out)
    print(written["html"])
    print(written["csv"])
    return 0


def cmd_examples(args) -> int:
    from .analysis import examples_report
    for path in examples_report(args.runs, args.figure):
        print(path)
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_runs
    for path in plot_runs(args.runs):
        print(path)
    return 0


def cmd_list(args) -> int:
    if args.what == "datasets":
        from .data.sources import SOURCES
        for name, fn in sorted(SOURCES.items()):
            print(f"{name:15s} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
    else:
        from .models import MODELS
        for name in MODELS:
            print(name)
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rotelab", description="Experiments on how deep networks memorize.")
    sub = p.add_subparsers(dest="command", required=True)

    def run_parser(name, cls, func, **kw):
        f = sub.add_parser(name, **kw)
        f.add_argument("--out", help="run directory to create")
        f.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint, with its saved config")
        f.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
        f.add_argument("--config", help="TOML or JSON file of config fields; flags given here override it")
        add_config_flags(f, cls)
        f.set_defaults(func=func)
        return f

    run_parser("fit", FitConfig, cmd_fit, help="train on data with corrupted labels or pixels",
               description="Train a network on data whose labels or pixels are corrupted (Zhang et al. 2017).")
    run_parser("forget", ForgetConfig, cmd_forget, help="memorize train + val parts, then train on the train part alone",
               description="Stage 1 trains on a train part and a val part, each with its own corruption; stage 2 "
                           "continues on the train part alone. --stage2-from CHECKPOINT starts stage 2 of a new run "
                           "from a stage-1 checkpoint of another (only stage-2 options may be given then).")

    run_parser("infoplane", InfoPlaneConfig, cmd_infoplane, help="information planes of every layer, for several seeds",
               description="Train as fit does, for each of --seeds (OUT/seed-N), capturing every layer at "
                           "log-spaced epochs and estimating I(X;T) and I(T;Y) (Shwartz-Ziv & Tishby 2017; Saxe et al. 2018).")

    nz = sub.add_parser("noise", help="weight-noise ramp on trained runs: accuracy and weight information as alpha rises",
                        description="Freeze each trained run, wrap its weights in multiplicative log-normal noise and "
                                    "raise alpha every --every epochs; each run's results go to OUT/<name>.")
    nz.add_argument("runs", nargs="*", help="trained run directories")
    nz.add_argument("--out", help="folder for the ramp runs")
    nz.add_argument("--resume", metavar="OUT", help="continue the ramp runs in OUT")
    nz.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    nz.add_argument("--config", help="TOML or JSON file of ramp options; flags override it")
    add_config_flags(nz, NoiseConfig, skip=("source",))
    nz.set_defaults(func=cmd_noise)

    sw = sub.add_parser("sweep", help="run a grid of points from a sweep file (TOML), skipping finished ones",
                        description="Each point of the grid (base config x axes) becomes a run directory named "
                                    "from its axis values. Finished points are skipped, broken ones resumed.")
    sw.add_argument("file", help="sweep file (TOML or JSON)")
    sw.add_argument("--out", help="folder of the points (default: the file's `out`)")
    sw.add_argument("--dry-run", action="store_true", help="list the points and their state, run nothing")
    sw.add_argument("--executor", choices=("local", "ray"), default="local", help="(default: local)")
    sw.add_argument("--jobs", type=int, default=None,
                    help="local: points at a time (default: one per core, at most one per 2 GiB free memory)")
    sw.add_argument("--address", default=None, help="ray: cluster address, e.g. auto (default: start a local Ray)")
    sw.add_argument("--cpus-per-point", type=float, default=1, help="ray: CPUs of each point's task (default: 1)")
    sw.add_argument("--gpus-per-point", type=float, default=0, help="ray: GPUs of each point's task (default: 0)")
    sw.add_argument("--vectorize-seeds", action="store_true",
                    help="train new fit points that differ only in seed or corruption as one batched model "
                         "(mlp and tishby; each still gets its own run directory)")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="an HTML report (figures embedded), PNGs and a CSV from finished runs")
    rp.add_argument("runs", nargs="+", help="run directories or folders holding them (searched recursively)")
    rp.add_argument("--out", default="report.html", help="the HTML file; the CSV and a _figures folder go beside it")
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("examples", help="per-example analysis: forgetting events, first-learned epochs, oscillation")
    ex.add_argument("runs", nargs="+", help="run directories with examples.npz")
    ex.add_argument("--figure", default=None,
                    help="where the figure comparing the runs' intersection/union curves goes (default: "
                         "figures/overlap_runs.png in the first run)")
    ex.set_defaults(func=cmd_examples)

    pl = sub.add_parser("plot", help="figures of finished or running runs")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.set_defaults(func=cmd_plot)

    for what in ("datasets", "models"):
        s = sub.add_parser(what, help=f"list the {what}")
        s.set_defaults(func=cmd_list, what=what)
    return p


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"rotelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rotelab: interrupted; continue with `rotelab fit --resume RUN`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
