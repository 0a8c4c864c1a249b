"""The `rotelab` command. Every config field is a flag: `--batch-size` sets FitConfig.batch_size."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, flag, load_config_file


def _comma_list(kind, words: str, example: str):
    """An argparse type: comma-separated values of `kind` ("" is the empty list)."""
    def parse(text: str) -> list:
        if text.strip() == "":
            return []
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {words} such as {example}, got {text!r}") from None
    return parse


parse_ints = _comma_list(int, "integers", "512,512")
parse_floats = _comma_list(float, "numbers", "0.3,0.5")


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """text split at `sep` outside brackets and quotes: "a=[1,2],b='x,y'" -> ["a=[1,2]", "b='x,y'"]."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_value(text: str):
    """A model argument's value: a Python or JSON literal (numbers, lists such as [512,512], tuples,
    quoted text, True/False/None and JSON's true/false/null), else the text itself (relu)."""
    import ast
    import json
    text = text.strip()
    for read in (ast.literal_eval, json.loads):
        try:
            return read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def parse_kwargs(text: str) -> dict:
    """An argparse type: NAME=VALUE pairs, comma-separated outside brackets and quotes, each value a
    literal where it reads as one (parse_value): widths=[512,512],activation=tanh,dropout=0.1
    ("" is no pair)."""
    out = {}
    for item in filter(None, (t.strip() for t in split_top_level(text))):
        name, eq, value = item.partition("=")
        if not eq or not name.strip().isidentifier():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs such as widths=[64,64],dropout=0.1, got {item!r}")
        out[name.strip()] = parse_value(value)
    return out


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    if f.metadata.get("type") == "ints":
        return parse_ints
    if f.metadata.get("type") == "floats":
        return parse_floats
    if f.metadata.get("type") == "kwargs":
        return parse_kwargs
    if t.startswith("bool"):
        return bool
    kind = float if "float" in t else int if "int" in t else str
    if kind is not str and "None" in t:   # `--until-fit none`: the field's None
        def number_or_none(text: str):
            if text.strip().lower() == "none":
                return None
            try:
                return kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None
        number_or_none.__name__ = kind.__name__
        return number_or_none
    return kind


def add_config_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One flag per dataclass field. Defaults are SUPPRESSed so that we can tell which flags the
    user gave (they override a --config file); the help text still shows the default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_ = f"{f.metadata.get('help', '')} (default: {shown})"
        kind = _field_type(f)
        kwargs: dict = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if kind is bool:
            parser.add_argument(flag(f.name), *f.metadata.get("aliases", ()), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag(f.name), *f.metadata.get("aliases", ()), type=kind, choices=f.metadata.get("choices"),
                                metavar=f.name.upper() if not f.metadata.get("choices") else None, **kwargs)


def add_spelling_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """The older flags that spell a model argument (--widths, --depth, ...), for configs that take them."""
    from .config import SPELLING_FLAGS, config_spellings
    for name in sorted(config_spellings(cls) - set(skip), key=list(SPELLING_FLAGS).index):
        kind, help_ = SPELLING_FLAGS[name]
        kind_: Any = kind
        kwargs: dict = dict(dest=name, default=argparse.SUPPRESS, help=help_)
        if kind_ == "bool":
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(kind_, tuple):
            parser.add_argument(flag(name), choices=kind_, **kwargs)
        else:
            parser.add_argument(flag(name), type=parse_ints if kind_ == "ints" else kind_, metavar=name.upper(), **kwargs)


def config_names(cls) -> set[str]:
    from .config import config_spellings
    return {f.name for f in dataclasses.fields(cls)} | config_spellings(cls)


def config_from_args(args: argparse.Namespace, cls):
    """defaults < --config file < flags given on the command line."""
    names = config_names(cls)
    values = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls.from_dict(values)


def given_config_flags(args: argparse.Namespace, cls) -> list[str]:
    names = config_names(cls)
    return [flag(k) for k in vars(args) if k in names]


def _report(run) -> None:
    from .protocol import protocol_of
    status = run.read_status()
    final = status.get("final", {})
    line = (f"{run.path}: {status.get('state')} after {status.get('epochs_completed')} epochs; "
            + ", ".join(f"{k.replace('_', ' ')} {final[k]:.4f}" for k in ("train_acc", "val_acc", "test_acc")
                        if final.get(k) is not None))
    if status.get("fit_epoch"):
        line += f"; fit at epoch {status['fit_epoch']}"
    more = protocol_of(run).report_lines
    print("\n  ".join([line, *(more(run) if more else [])]))


def _resume_or_out(args, cls, inputs=()) -> bool:
    """True for --resume (checking no new config is given with it, but for flags that only change
    what is shown), False for a new run in --out."""
    from .runner import check_display_only
    if args.resume:
        check_display_only((["--out"] if args.out else []) + given_config_flags(args, cls)
                           + (["--config"] if args.config else []) + list(inputs), args.resume)
        return True
    if not args.out:
        raise ConfigError("--out", "say where the run goes, e.g. --out runs/my-run (or --resume runs/old-run)")
    return False


def default_threads() -> int | None:
    """Torch threads for a run started from the command line: torch's default (one per core) on an
    idle machine, fewer when other work already keeps cores busy (the 1-minute load average), so that
    two runs side by side do not oversubscribe the cores (measured on 2 cores beside other CPU-bound
    work: a memorization run took 124 s with two threads, 12.7 s with one). OMP_NUM_THREADS, when set,
    wins."""
    import os
    from .plan import usable_cores
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, usable_cores() - busy)


def cmd_protocol(args) -> int:
    """Every protocol's command: plan a new output in --out, or plan --resume PATH again from what it
    recorded; then execute the plan in this process."""
    from .plan import execute, plan, plan_state, replace_config, replan
    from .protocol import get_protocol
    from .runner import DISPLAY_FIELDS
    from .store import RunDir
    threads = default_threads()
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    proto = get_protocol(args.protocol)
    inputs = proto.derived.inputs(args) if proto.derived else {}
    given_inputs = ["runs"] if any(inputs.values()) else []   # positional inputs: the runs a protocol reads
    if _resume_or_out(args, proto.config, given_inputs):
        p = replan(args.resume)
        if p.protocol != proto.name:
            raise ConfigError("--resume", f"{args.resume} is a {p.protocol} run; continue it with "
                                          f"`rotelab {p.protocol} --resume {args.resume}`")
        if plan_state(p) == "done":
            if p.finish is None:
                print(f"{args.resume}: already finished; nothing to do")
                return 0
            print(f"{args.resume}: every run is done; finishing the folder again")   # a finish cut short redone
            p.finish(p.out)
            return 0
        display = {k: v for k, v in vars(args).items() if k in DISPLAY_FIELDS}
        p.runs = [replace_config(r, **display) for r in p.runs]
        execute([p])
    else:
        cfg = proto.config_from_args(args) if proto.config_from_args else None
        p = plan(proto.name, cfg or config_from_args(args, proto.config), args.out, **inputs)
        execute([p], overwrite=args.overwrite, keep_existing=False)
    if proto.folder and proto.folder.summary_lines:
        print("\n  ".join(proto.folder.summary_lines(p.out)))
    else:
        for r in p.runs:
            _report(RunDir(r.path))
    return 0


def cmd_sweep(args) -> int:
    from .sweep import load_sweep, point_line, sweep
    if args.dry_run:
        protocol, points = load_sweep(args.file, args.out)
        for p in points:
            print(point_line(protocol, p))
        print(f"{len(points)} points ({protocol})")
        return 0
    results = sweep(args.file, args.out, args.executor, args.jobs, args.address, args.cpus_per_point,
                    args.gpus_per_point, args.vectorize_seeds, args.device)
    for r in results:
        print(f"{r['state']:8s} {r['path']}" + (f"  ({r['error']})" if r.get("error") else ""))
    failed = sum(r["state"] == "failed" for r in results)
    stale = sum(r["state"] == "stale" for r in results)
    elsewhere = [r for r in results if r["state"] == "running"]
    print(f"{len(results)} points: {sum(r['state'] == 'done' for r in results)} run, "
          f"{sum(r['state'] == 'skipped' for r in results)} already done, {failed} failed"
          + (f", {stale} stale (made with other settings; left as they are)" if stale else "")
          + (f", {len(elsewhere)} running in another process" if elsewhere else ""))
    if elsewhere:
        pids = sorted({r["pid"] for r in elsewhere})
        print(f"another process (PID {', '.join(pids)}) is running {len(elsewhere)} of these points; wait for it "
              f"(e.g. `tail --pid={pids[0]} -f /dev/null`), then run `{continue_command(args)}` again to check them")
    return 1 if failed or stale else 0


def cmd_reproduce(args) -> int:
    from .reproduce import list_studies, reproduce, summary_line
    if args.list:
        for line in list_studies():
            print(line)
        return 0
    if not args.name:
        raise ConfigError("NAME", "say which study, e.g. rotelab reproduce zhang-fig1 (rotelab reproduce --list)")
    results = reproduce(args.name, args.scale, args.out, dry_run=args.dry_run, finished=args.finished,
                        steps_only=args.steps, executor=args.executor,
                        jobs=args.jobs, address=args.address, cpus_per_point=args.cpus_per_point,
                        gpus_per_point=args.gpus_per_point, data_root=args.data_root, device=args.device)
    if args.dry_run:
        return 0
    if args.publish:
        from .reproduce import publish
        print(publish(results["out"], args.publish))
    for c in results["checks"]:
        mark = {True: "pass", False: "FAIL", None: "    "}[c["pass"]]
        print(f"{mark}  {c['name']}: {c['value']} (expected {c['expected']})")
    print(summary_line(results))
    return 0 if all(c["pass"] is not False for c in results["checks"]) else 1


def cmd_report(args) -> int:
    from .report import report
    written = report(args.runs, args.out)
    print(written["html"])
    print(written["csv"])
    return 0


def cmd_examples(args) -> int:
    from .analysis import examples_by, examples_report
    if args.by:
        import pandas as pd
        with pd.option_context("display.width", 160, "display.max_columns", 12):
            for path in args.runs:
                rows = examples_by(path, args.by, args.top, args.lowest)
                print(f"{path}: the {args.top} examples of {'lowest' if args.lowest else 'highest'} {args.by}")
                print(rows.to_string(index=False))
        return 0
    for path in examples_report(args.runs, args.figure):
        print(path)
    return 0


def cmd_replay(args) -> int:
    from .replay import replay
    bad = 0
    for path in args.runs:
        r = replay(path, args.epochs)
        versions = f"trained at {r['trained_at'] or '?'}, replayed at {r['replayed_at'] or '?'}"
        if r["differences"]:
            bad += 1
            e, key, a, b = r["differences"][0]
            why = ("; trained with " + ", ".join(r["unlike"]) + ": kernels round differently, so small differences "
                   "are expected" if r["unlike"] else "" if r["conditions_known"] else
                   "; the run does not record its CPU kernels and threads: if they differed, so does rounding")
            print(f"{path}: {len(r['differences'])} of {r['compared']} values differ in the first {r['epochs']} "
                  f"epochs ({versions}); first: epoch {e} {key} {a!r} saved, {b!r} replayed{why}")
        else:
            print(f"{path}: identical, {r['compared']} values in the first {r['epochs']} epochs ({versions})")
    return 1 if bad else 0


def cmd_plot(args) -> int:
    from .report import plot_paths
    for path in plot_paths(args.runs):
        print(path)
    return 0


def cmd_list(args) -> int:
    """The registered names (plugins included), then the forms any other name may take."""
    if args.what == "datasets":
        from .data.sources import SOURCES as reg
    else:
        from .models import MODELS as reg, model_arguments
    for name in reg.names():
        obj = reg.get(name)
        if args.what == "datasets":
            doc = (obj.__doc__ or "").strip().splitlines()
            print(f"{name:15s} {doc[0] if doc else ''}".rstrip())
        else:   # with what --model-args may set
            args_ = ", ".join(f"{k}={v!r}" for k, v in model_arguments(name).items())
            print(f"{name:15s} {args_}".rstrip())
    for prefix, factory in reg.schemes.items():
        print(f"{prefix + ':NAME':15s} {factory.scheme_help}".rstrip())
    if reg.import_paths:
        print(f"{'MODULE:FUNCTION':15s} any importable builder returning an nn.Module (input_shape=, num_classes= where it declares them)")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (what is wrong and where the options are listed), not
    the command's whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def make_parser() -> argparse.ArgumentParser:
    from .version import __version__
    p = Parser(prog="rotelab", description="Experiments on how deep networks memorize.")
    p.add_argument("--version", action="version", version=f"rotelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    from .protocol import load_protocols
    for proto in load_protocols().values():
        f = sub.add_parser(proto.name, help=proto.help, description=proto.description or proto.help)
        if proto.derived:
            proto.derived.add_arguments(f)
        f.add_argument("--out", help="where the run (or its folder of runs) goes")
        f.add_argument("--resume", metavar="RUN", help="continue RUN (or a folder of runs) from its last checkpoint, "
                                                       "with its saved config")
        f.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
        f.add_argument("--config", help="TOML or JSON file of config fields; flags given here override it")
        add_config_flags(f, proto.config, skip=proto.derived.cli_skip if proto.derived else ())
        add_spelling_flags(f, proto.config, skip=proto.derived.cli_skip if proto.derived else ())
        f.set_defaults(func=cmd_protocol, protocol=proto.name)

    sw = sub.add_parser("sweep", help="run a grid of points from a sweep file (TOML), skipping finished ones",
                        description="Each point of the grid (base config x axes) becomes a run directory named "
                                    "from its axis values. Finished points are skipped, broken ones resumed.")
    sw.add_argument("file", help="sweep file (TOML or JSON)")
    sw.add_argument("--out", help="folder of the points (default: the file's `out`)")
    sw.add_argument("--dry-run", action="store_true", help="list the points and their state, run nothing")
    sw.add_argument("--executor", choices=("local", "ray"), default="local", help="(default: local)")
    sw.add_argument("--jobs", type=positive_int, default=None,
                    help="local: points at a time (default: one per core, at most one per 2 GiB free memory)")
    sw.add_argument("--address", default=None, help="ray: cluster address, e.g. auto (default: start a local Ray)")
    sw.add_argument("--cpus-per-point", type=float, default=1, help="ray: CPUs of each point's task (default: 1)")
    sw.add_argument("--gpus-per-point", type=float, default=None, help="ray: GPUs of each point's task (default: 1 where the cluster has GPUs and the device is not cpu, else 0; a fraction shares a GPU)")
    sw.add_argument("--device", default=None, help="where every point trains (auto, cpu, cuda, cuda:N), over the sweep file's")
    sw.add_argument("--vectorize-seeds", action="store_true",
                    help="train new fit points that differ only in seed or corruption as one batched model "
                         "(any model; each still gets its own run directory)")
    sw.set_defaults(func=cmd_sweep)

    rr = sub.add_parser("reproduce", help="run a study (a paper's figure) end to end and check it against the paper",
                        description="Run every step of a study at a scale (skipping finished runs), then write "
                                    "OUT/figures/*.png, OUT/results.json and OUT/report.html.")
    rr.add_argument("name", nargs="?", help="study name (see --list) or a study .toml file")
    rr.add_argument("--list", action="store_true", help="list the studies, what they reproduce and their time per scale")
    rr.add_argument("--scale", default=None, choices=("smoke", "cpu", "paper"),
                    help="(default: cpu where the study has it, else paper)")
    rr.add_argument("--out", default=None, help="output folder (default: runs/reproduce/NAME-SCALE)")
    rr.add_argument("--dry-run", action="store_true", help="list the steps' runs and their state, run nothing")
    rr.add_argument("--finished", action="store_true",
                    help="run nothing: checks and figures from the runs that are done, the rest listed as not in them")
    rr.add_argument("--steps", type=lambda v: [s.strip() for s in v.split(",") if s.strip()], default=None,
                    help="run these steps alone (comma-separated names), then check and draw from the runs that "
                         "are done, as --finished does")
    rr.add_argument("--publish", metavar="DOCS", default=None,
                    help="also copy the results and figures into DOCS and rewrite DOCS/reproductions.md")
    rr.add_argument("--data-root", default=None, help="folder of torchvision-format data (cifar10, ...)")
    rr.add_argument("--executor", choices=("local", "ray"), default="local", help="(default: local)")
    rr.add_argument("--jobs", type=positive_int, default=None, help="local: runs at a time (default: 1)")
    rr.add_argument("--address", default=None, help="ray: cluster address")
    rr.add_argument("--cpus-per-point", type=float, default=1, help="ray: CPUs per run (default: 1)")
    rr.add_argument("--gpus-per-point", type=float, default=None, help="ray: GPUs of each point's task (default: 1 where the cluster has GPUs and the device is not cpu, else 0; a fraction shares a GPU)")
    rr.add_argument("--device", default=None, help="where every run trains (auto, cpu, cuda, cuda:N), over the study's")
    rr.set_defaults(func=cmd_reproduce)

    rp = sub.add_parser("report", help="an HTML report (figures embedded), PNGs and a CSV from finished runs")
    rp.add_argument("runs", nargs="+", help="run directories or folders holding them (searched recursively)")
    rp.add_argument("--out", default="report.html", help="the HTML file; the CSV and a _figures folder go beside it")
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("examples", help="per-example analysis: forgetting events, first-learned epochs, oscillation")
    ex.add_argument("runs", nargs="+", help="run directories with examples.npz (or memorize folders, with --by)")
    ex.add_argument("--by", metavar="SIGNAL", default=None,
                    help="list the examples of highest SIGNAL instead: mem, cscore_R, aum, confidence, "
                         "forgetting_events, learned_at, cleanlab_quality, ... (any per-example column)")
    ex.add_argument("--top", type=positive_int, default=20, help="with --by: how many (default: 20)")
    ex.add_argument("--lowest", action="store_true", help="with --by: the lowest values instead")
    ex.add_argument("--figure", default=None,
                    help="where the figure comparing the runs' intersection/union curves goes (default: "
                         "figures/overlap_runs.png in the first run)")
    ex.set_defaults(func=cmd_examples)

    rl = sub.add_parser("replay", help="train the first epochs of runs again with this code and compare their "
                                       "metrics exactly (exit 1 on any difference)",
                        description="Train the first epochs of each run again in a temporary folder and compare "
                                    "every metric (timings aside) bit for bit. Equal numbers need the run's own "
                                    "device and thread count.")
    rl.add_argument("runs", nargs="+", help="run directories (fit, forget, or one seed of an infoplane folder)")
    rl.add_argument("--epochs", type=int, default=3, help="epochs to replay (default: 3)")
    rl.set_defaults(func=cmd_replay)

    pl = sub.add_parser("plot", help="figures of finished or running runs")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.set_defaults(func=cmd_plot)

    for what in ("datasets", "models"):
        s = sub.add_parser(what, help=f"list the {what}")
        s.set_defaults(func=cmd_list, what=what)
    return p


def store_error_line(args, e) -> str:
    """A StoreError as one line naming the option whose path it concerns, and the fix: only a run the
    command writes may be replaced or continued; a run it only reads is never offered for deletion."""
    from .store import RunLocked
    target = e.path.resolve()
    option = None
    for name in ("resume", "out", "stage2_from", "runs", "file"):
        for value in ([getattr(args, name, None)] if not isinstance(getattr(args, name, None), list)
                      else getattr(args, name)):
            if value and (target == Path(value).resolve() or Path(value).resolve() in target.parents):
                option = name
                break
        if option:
            break
    shown = "runs" if option == "runs" else ("--" + option.replace("_", "-") if option else "error")
    if isinstance(e, RunLocked):
        fix = "wait for it to finish, or stop that process first"
    elif option == "out":
        fix = "choose another --out, pass --resume to continue it, or --overwrite to replace it"
    elif option == "resume" and not e.path.exists():
        fix = "give the folder of a run (or of a group of runs) to continue"
    elif option == "resume":
        fix = "start it again with --out ... --overwrite, or give another run"
    else:
        fix = "give a finished rotelab run directory there"
    return f"{shown}: {e}; {fix}"


def continue_command(args) -> str:
    """The command that continues what `args` started: `rotelab PROTOCOL --resume OUT` for a run (or a
    folder of runs); the same command again for a sweep or a study (they skip finished points)."""
    import shlex
    if getattr(args, "protocol", None):
        return f"rotelab {args.protocol} --resume {shlex.quote(str(args.resume or args.out))}"
    return "rotelab " + shlex.join(args.argv)


def main(argv=None) -> int:
    import signal
    from .runner import RunIOError, handle_termination
    from .store import StoreError
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    handle_termination()
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        what = "" if not (getattr(args, "out", None) or getattr(args, "resume", None) or args.command in
                          ("sweep", "reproduce")) else f"; continue with `{continue_command(args)}`"
        print(f"rotelab: interrupted ({signal.Signals(signum).name}){what}", file=sys.stderr)
        return 128 + signum
    except RunIOError as e:
        print(f"rotelab: error: cannot write the run: {e}; free space or fix the path, then "
              f"`{continue_command(args)}`", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"rotelab: error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"rotelab: error: {store_error_line(args, e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        # a path the user gave cannot be read or written (permissions, a full disk, a file for a folder)
        print(f"rotelab: error: {e.filename}: {e.strerror}; check the path and its permissions", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
