"""Protocols: each file registers one (see rotelab.registry). Helpers every protocol uses to run,
resume and keep status.json honest."""

from __future__ import annotations

from ..store import RunDir, StoreError


def train_run(run: RunDir, loop, summary=None) -> RunDir:
    """Run the loop under the run's lock, keeping status.json honest if it fails or is interrupted;
    `summary(run)`, if given, adds a protocol's summary to the final status. The lock is released
    when the run ends (or with the process)."""
    run.lock()
    try:
        try:
            loop.run()
        except KeyboardInterrupt:
            run.write_status("interrupted", epochs_completed=loop.epoch)
            raise
        except StoreError:   # a damaged run file, not a crash of the run: status stays as it was
            raise
        except Exception as e:
            run.write_status("failed", epochs_completed=loop.epoch, error=f"{type(e).__name__}: {e}")
            raise
        result = summary(run) if summary is not None else None
        if result is not None:
            run.write_status("done", summary=result)
        return run
    finally:
        run.unlock()


def resume(path) -> RunDir:
    """Continue one run from its last checkpoint (or from scratch if it has none), with the protocol
    that made it. A finished run is left as it is. Takes the run's lock before reading anything."""
    from ..registry import protocol_of
    run = RunDir(path)
    proto = protocol_of(run)
    run.lock()
    try:
        cfg = proto.config.from_dict(run.read_config()).validate()
        metrics = run.read_metrics()   # damaged files stop the resume here, before anything is written
        if run.examples_file.is_file():
            run.read_examples()
        run.read_info()
        state = run.load_checkpoint() if run.last_checkpoint.is_file() else None
        loop = proto.build_loop(cfg, run, state)
        if loop.done and run.read_status().get("state") == "done":
            return run
        # killed after its last checkpoint but before its final status: the final metrics are on disk
        loop.last_metrics = next((m for m in reversed(metrics) if m.get("epoch") == loop.epoch), None)
        run.write_status("running", epochs_completed=loop.epoch)
    except BaseException:
        run.unlock()
        raise
    return train_run(run, loop, proto.summarize and (lambda r: proto.summarize(r, cfg)))


def start_one(protocol: str, cfg, out, overwrite: bool = False, keep_existing: bool = False,
              summary=None) -> list[RunDir]:
    """The usual `start` of a protocol whose output is one run directory: check, build (raising on bad
    input before anything is written), lock, create, train. keep_existing resumes (or leaves alone)
    a run already in `out`; `summary(run)` defaults to the protocol's summarize."""
    from ..registry import get_protocol
    from ..store import environment
    proto = get_protocol(protocol)
    cfg.validate()
    if keep_existing and RunDir(out).config_file.is_file():
        return [resume(out)]
    run = RunDir.check_new(out, overwrite)
    loop = proto.build_loop(cfg, run, None)
    run.lock()
    try:
        run.create(cfg.to_dict(), environment(loop.device), overwrite, protocol=protocol)
    except BaseException:
        run.unlock()
        raise
    summarize = summary or (proto.summarize and (lambda r: proto.summarize(r, cfg)))
    return [train_run(run, loop, summarize)]
