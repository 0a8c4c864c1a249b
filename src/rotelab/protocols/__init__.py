"""Protocols: each a function from a config to a run directory."""

from __future__ import annotations

from ..store import RunDir


def train_run(run: RunDir, loop, summary=None) -> RunDir:
    """Run the loop, keeping status.json honest if it fails or is interrupted; `summary(run)`, if
    given, adds a protocol's summary to the final status."""
    try:
        loop.run()
    except KeyboardInterrupt:
        run.write_status("interrupted", epochs_completed=loop.epoch)
        raise
    except Exception as e:
        run.write_status("failed", epochs_completed=loop.epoch, error=f"{type(e).__name__}: {e}")
        raise
    result = summary(run) if summary is not None else None
    if result is not None:
        run.write_status("done", summary=result)
    return run


def protocol_module(name: str):
    from . import fit, forget, infoplane, noise
    return {"fit": fit, "forget": forget, "infoplane": infoplane, "noise": noise}[name]


def resume(path) -> RunDir:
    """Continue any run from its last checkpoint (or from scratch if it has none), with the protocol
    that made it. A finished run is left as it is."""
    run = RunDir(path)
    proto = protocol_module(run.read_protocol())
    cfg = proto.CONFIG.from_dict(run.read_config()).validate()
    state = run.load_checkpoint() if run.last_checkpoint.is_file() else None
    loop = proto.build_loop(cfg, run, state)
    if loop.done and run.read_status().get("state") == "done":
        return run
    run.write_status("running", epochs_completed=loop.epoch)
    summarize = getattr(proto, "summarize", None)
    return train_run(run, loop, summarize and (lambda r: summarize(r, cfg)))
