"""One run's lifecycle, for every protocol: start, resume, runs trained as one stack, status.json and
what ends a run early (SIGINT and SIGTERM, I/O errors, bugs). plan.execute decides which of these a
planned run needs.

    start_one(proto, cfg, out)          a new run in one directory
    start_stack(cfgs, paths)            new runs trained together as one stack
    resume(path)                        continue one run from its newest intact checkpoint
    resume_stack(paths)                 begun runs of one stack, continued as one stack again
    train([runs], [loops], summaries)   the part every path shares: lock, run, keep status.json honest

status.json always says where a resume starts: `epochs_completed` is the epoch of the checkpoint on
disk. A run ends as "done", "interrupted" (SIGINT, SIGTERM: re-raised as KeyboardInterrupt),
"failed" with the error (a bug; an OSError while writing is re-raised as RunIOError, one line), and
a damaged run file (StoreError) leaves the status as it was.
"""

from __future__ import annotations

import dataclasses
import errno as errno_names
import signal
import sys
from pathlib import Path

from .errors import ConfigError, StoreError
from .store import RunDir, environment, writes_together

# Fields that change what is shown, never what is computed: a resume accepts them.
DISPLAY_FIELDS = ("progress",)


class Interrupted(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, batch schedulers), handled as Ctrl-C is."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def handle_termination():
    """SIGTERM raises Interrupted in the main thread, so that a run ends as it does on Ctrl-C."""
    try:
        signal.signal(signal.SIGTERM, _raise_interrupted)
    except ValueError:   # not the main thread: leave the default
        pass


class RunIOError(OSError):
    """Writing a run failed (disk full, quota, I/O error): one line naming the path and the errno."""

    def __init__(self, e: OSError, path):
        self.path = Path(e.filename or path)
        super().__init__(e.errno, e.strerror, str(self.path))

    def __str__(self):
        name = errno_names.errorcode.get(self.errno, str(self.errno))
        return f"{self.path}: {self.strerror} ({name})"


def train(runs: list[RunDir], loops: list, summaries=None, together: bool = False) -> list[RunDir]:
    """Run the loops (one after another, or as one stack with `together`) under their runs' locks,
    keeping each status.json honest however they end; summaries[i](run) adds a protocol's summary
    to run i's final status. Locks are released when this returns (or with the process)."""
    from .engine import run_together
    summaries = summaries or [None] * len(runs)
    for r in runs:
        r.lock()
    try:
        try:
            if together:
                run_together(loops)
            else:
                for loop in loops:
                    loop.run()
        except KeyboardInterrupt:
            _mark(runs, loops, "interrupted")
            raise
        except StoreError:   # a damaged run file, not a crash of the run: status stays as it was
            raise
        except OSError as e:
            _mark(runs, loops, "failed", error=f"{type(e).__name__}: {e}")
            raise RunIOError(e, runs[0].path) from None
        except Exception as e:
            _mark(runs, loops, "failed", error=f"{type(e).__name__}: {e}")
            raise
        for run, summary in zip(runs, summaries):
            result = summary(run) if summary is not None else None
            if result is not None:
                run.write_status("done", summary=result)
        return runs
    finally:
        for r in runs:
            r.unlock()


def _mark(runs, loops, state: str, **extra):
    """The status of runs that ended early; epochs_completed is where their resume starts. Best effort:
    a full disk may refuse this too."""
    for run, loop in zip(runs, loops):
        if loop.done and state == "interrupted" and run.read_status().get("state") == "done":
            continue
        try:
            run.write_status(state, epochs_completed=checkpoint_epoch(run, loop.saved_epoch), **extra)
        except OSError:
            pass


def checkpoint_epoch(run: RunDir, default: int) -> int:
    """The epoch of the checkpoint on disk (a signal can land between writing it and noting it), read
    without loading its tensors; `default` if there is none or it cannot be read."""
    import torch
    try:
        return int(torch.load(run.last_checkpoint, map_location="cpu", weights_only=False, mmap=True)["epoch"])
    except Exception:
        return default


def summarizer(proto, cfg):
    """What writes a finished run's summary into status.json: the protocol's, bound to this config
    (None when the protocol has none)."""
    summarize = proto.summarize
    return None if summarize is None else (lambda run: summarize(run, cfg))


def resumable_state(run: RunDir) -> dict | None:
    """The newest intact checkpoint's state (last.pt, else the newest kept epoch_NNNN.pt), saying so in
    one line when it falls back or finds a damaged kept checkpoint; None for a run that has none."""
    candidates = run.resume_checkpoints()
    damaged = []
    for path in candidates:
        try:
            state = run.load_checkpoint(path)
        except StoreError as e:
            damaged.append(e)
            continue
        for bad in damaged:
            print(f"rotelab: {bad}; resuming from {path.relative_to(run.path)} (epoch {state['epoch']})", file=sys.stderr)
        for name in run.damaged_checkpoints():
            if run.checkpoints / name != path and all(d.path.name != name for d in damaged):
                print(f"rotelab: note: checkpoint {run.checkpoints / name} is damaged (its size differs from "
                      "the one written); delete it", file=sys.stderr)
        return state
    if damaged:
        raise damaged[0]
    return None


def resume(path, display: dict | None = None) -> RunDir:
    """Continue one run from its newest intact checkpoint (or from scratch if it has none), with the
    protocol that made it and its saved config (`display` may change DISPLAY_FIELDS only). A finished
    run is left as it is. Takes the run's lock before reading anything."""
    from .protocol import protocol_of
    run = RunDir(path)
    proto = protocol_of(run)
    run.lock()
    try:
        cfg = proto.config.from_dict(run.read_config()).validate()
        if display:
            cfg = dataclasses.replace(cfg, **{k: v for k, v in display.items() if k in DISPLAY_FIELDS})
        metrics = run.read_metrics()   # damaged files stop the resume here, before anything is written
        if run.examples_file.is_file():
            run.read_examples()
        run.read_info()
        loop = proto.build_loop(cfg, run, resumable_state(run))
        if loop.done and run.read_status().get("state") == "done":
            run.unlock()
            return run
        # killed after its last checkpoint but before its final status: the final metrics are on disk
        loop.last_metrics = next((m for m in reversed(metrics) if m.get("epoch") == loop.epoch), None)
        run.write_status("running", epochs_completed=loop.epoch)
    except BaseException:
        run.unlock()
        raise
    return train([run], [loop], [summarizer(proto, cfg)])[0]


def resume_stack(paths: list) -> list[RunDir] | None:
    """Begun runs of one stack continued as one stack again, where they can be: none done, each from
    a checkpoint of the same epoch, configs that stack. None, with nothing written, where they cannot
    (resume them one by one). Takes every run's lock before reading anything; raises RunLocked where
    another process holds one."""
    from .protocol import protocol_of
    from .vectorized import Stacked, check_vectorizable
    runs = [RunDir(p) for p in paths]
    try:
        loops, cfgs, summaries = [], [], []
        for run in runs:
            run.lock()
            proto = protocol_of(run)
            cfg = proto.config.from_dict(run.read_config()).validate()
            run.read_metrics()   # damaged files stop here, before anything is written
            if run.examples_file.is_file():
                run.read_examples()
            loops.append(proto.build_loop(cfg, run, resumable_state(run)))
            cfgs.append(cfg)
            summaries.append(summarizer(proto, cfg))
        try:
            check_vectorizable(cfgs)
        except ConfigError:
            loops = []
        if not loops or len({l.epoch for l in loops}) != 1 or any(l.done for l in loops):
            for r in runs:
                r.unlock()
            return None
        for run, loop in zip(runs, loops):
            run.write_status("running", epochs_completed=loop.epoch)
        Stacked(loops)
    except BaseException:
        for r in runs:
            r.unlock()
        raise
    return train(runs, loops, summaries, together=True)


def start_one(proto, cfg, out, overwrite: bool = False, keep_existing: bool = False) -> list[RunDir]:
    """A protocol's run in one directory: check, build (raising on bad input before anything is
    written), lock, create, train. keep_existing resumes (or leaves alone) a run already in `out`."""
    cfg.validate()
    if keep_existing and RunDir(out).config_file.is_file():
        return [resume(out)]
    run = RunDir.check_new(out, overwrite or keep_existing)
    loop = proto.build_loop(cfg, run, None)
    # Look again under the lock: another process (a second sweep on the same folder) may have made
    # this run while the loop was built; it then holds the lock (RunLocked) or has left the run behind
    # (resumed here; anything else in the folder makes create() refuse it as not empty).
    run.lock()
    try:
        if keep_existing and run.config_file.is_file():
            return [resume(out)]
        with writes_together():   # config and status wait for the disk once
            run.create(cfg.to_dict(), environment(loop.device, loop.model, loop.spec), overwrite, protocol=proto.name,
                       data=getattr(loop, "data_record", None))
    except BaseException:
        run.unlock()
        raise
    return train([run], [loop], [summarizer(proto, cfg)])


def start_stack(cfgs: list, paths: list, build_loop=None, protocol="fit", stack: str | None = None) -> list[RunDir]:
    """New runs of a protocol (a name or a Protocol) trained together as one stack (vectorized seeds);
    each gets its own ordinary run directory, status and summary. `build_loop` replaces the
    protocol's; `stack` picks the stack's kind (vectorized.Stacked)."""
    from .protocol import get_protocol
    from .vectorized import Stacked, check_stackable_model, check_vectorizable
    proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if build_loop is not None:
        proto = dataclasses.replace(proto, build_loop=build_loop)
    for c in cfgs:
        c.validate()
    check_vectorizable(cfgs)
    runs = [RunDir.check_new(p) for p in paths]
    loops = [proto.build_loop(c, r) for c, r in zip(cfgs, runs)]
    check_stackable_model(loops[0])
    try:
        for r in runs:   # then look again under the locks: another process may have made one meanwhile
            r.lock()
            RunDir.check_new(r.path)
        with writes_together():   # every run's config and status wait for the disk once
            for c, r, loop in zip(cfgs, runs, loops):
                r.create(c.to_dict(), environment(loop.device, loop.model, loop.spec), protocol=proto.name,
                         data=getattr(loop, "data_record", None))
        Stacked(loops, stack)
    except BaseException:
        for r in runs:
            r.unlock()
        raise
    summaries = [summarizer(proto, c) for c in cfgs]
    return train(runs, loops, summaries, together=True)


def check_display_only(given: list[str], where: str):
    """Refuse config flags with --resume unless they only change what is shown."""
    from .config import flag
    bad = [g for g in given if g not in {flag(f) for f in DISPLAY_FIELDS}]
    if bad:
        raise ConfigError(bad[0], f"--resume continues {where} with its saved config; drop this, "
                                  "or start a new run with --out")
