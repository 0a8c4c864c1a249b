"""Every bad input a user can give, over every command: exit status 2, one line on stderr naming the
input, no traceback, and every file of the workspace exactly as it was (nothing created, nothing
rewritten). Runs in process (one workspace of small finished runs, built once)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from rotelab.cli import main

FIT = ["fit", "--dataset", "digits", "--widths", "16", "--epochs", "2", "--no-progress", "--hist-every", "0"]
IP = ["infoplane", "--dataset", "tishby", "--model", "tishby"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """runs/fit (done), runs/forget (done), runs/ip (infoplane group), runs/ramp (noise), damaged
    copies of runs/fit (status running, so a resume would go ahead), config and sweep files."""
    root = tmp_path_factory.mktemp("ws")
    r = root / "runs"
    assert main([*FIT, "--out", str(r / "fit")]) == 0
    assert main(["fit", "--dataset", "digits", "--widths", "16", "--epochs", "2", "--no-progress", "--hist-every", "0",
                 "--example-record", "none", "--out", str(r / "noex")]) == 0
    assert main(["forget", "--dataset", "digits", "--widths", "16", "--epochs1", "2", "--epochs2", "1",
                 "--no-progress", "--hist-every", "0", "--out", str(r / "forget")]) == 0
    assert main([*IP, "--epochs", "2", "--captures", "2",
                 "--no-progress", "--hist-every", "0", "--out", str(r / "ip")]) == 0
    assert main(["noise", str(r / "fit"), "--steps", "1", "--every", "1", "--noise-samples", "1", "--no-progress",
                 "--out", str(r / "ramp")]) == 0
    for name, damage in (("garbage-metrics", lambda p: p.joinpath("metrics.jsonl").write_text('{"epoch": 1}\nxx\n{"epoch": 2}\n')),
                         ("garbage-examples", lambda p: p.joinpath("examples.npz").write_bytes(b"garbage")),
                         ("garbage-checkpoint", lambda p: p.joinpath("checkpoints", "last.pt").write_bytes(b"garbage")),
                         ("garbage-config", lambda p: p.joinpath("config.json").write_text("{not json")),
                         ("no-model-checkpoint", lambda p: __import__("torch").save({"epoch": 2}, p / "checkpoints" / "last.pt"))):
        shutil.copytree(r / "fit", r / name)
        status = json.loads((r / name / "status.json").read_text())
        (r / name / "status.json").write_text(json.dumps({**status, "state": "running"}))
        damage(r / name)
    (r / "empty").mkdir()
    (root / "a-file").write_text("x")
    (root / "bad.json").write_text("{bad")
    (root / "list.json").write_text("[1, 2]")
    (root / "bad.toml").write_text("epochs = [")
    (root / "typed.toml").write_text('epochs = "ten"\n')
    (root / "unknown.toml").write_text("bogus = 1\n")
    base = f'protocol = "fit"\nout = "{root / "grid"}"\n[base]\ndataset = "digits"\nepochs = 1\n'
    sweeps = {"sw-protocol": base.replace('"fit"', '"noise"') + "[axes]\nseed = [0]\n",
              "sw-key": base + "bogus = 1\n[axes]\nseed = [0]\n".replace("bogus = 1\n", "") + "[extra]\n",
              "sw-field": base + "bogus = 1\n[axes]\nseed = [0]\n",
              "sw-step0": base + "[axes]\nseed = {from = 0, to = 3, step = 0}\n",
              "sw-backwards": base + "[axes]\nseed = {from = 3, to = 0}\n",
              "sw-num0": base + "[axes]\nlr = {from = 0.1, to = 0.2, num = 0}\n",
              "sw-empty": base + "[axes]\nseed = []\n",
              "sw-model": base + '[axes]\nmodel = ["mlp", "nope"]\n',
              "sw-typed": base.replace("epochs = 1", 'epochs = "ten"') + "[axes]\nseed = [0]\n",
              "sw-lr": base + "[axes]\nlr = [0.1, -1.0]\n",
              "sw-noout": base.replace(f'out = "{root / "grid"}"\n', "") + "[axes]\nseed = [0]\n",
              "sw-range": base + '[axes]\nseed = {from = 0, to = "x"}\n'}
    for name, text in sweeps.items():
        (root / f"{name}.toml").write_text(text)
    return root


def snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(root))] = "dir"
    return out


R = "{root}/runs"
CASES = [
    # memorize: its own options' bounds, a model that cannot be stacked, a signal nobody recorded
    ("--train-fraction", ["memorize", "--dataset", "digits", "--train-fraction", "1.5", "--out", "{root}/o"]),
    ("--models", ["memorize", "--dataset", "digits", "--models", "1", "--out", "{root}/o"]),
    ("--stack", ["memorize", "--dataset", "digits", "--batch-norm", "--stack", "4", "--out", "{root}/o"]),
    ("--by", ["examples", "{root}/runs/fit", "--by", "aum"]),
    # fit: every option's type and bounds
    ("--dataset", [*FIT, "--dataset", "nope", "--out", "{root}/o"]),
    ("--model", [*FIT, "--model", "nope", "--out", "{root}/o"]),
    ("--corrupt", [*FIT, "--corrupt", "labels=2", "--out", "{root}/o"]),
    ("--corrupt", [*FIT, "--corrupt", "labels", "--out", "{root}/o"]),
    ("--corrupt", [*FIT, "--corrupt", "foo=0.1", "--out", "{root}/o"]),
    ("--corrupt", [*FIT, "--corrupt", "labels=x", "--out", "{root}/o"]),
    ("--lr", [*FIT, "--lr", "0", "--out", "{root}/o"]),
    ("--lr", [*FIT, "--lr", "-1", "--out", "{root}/o"]),
    ("--lr", [*FIT, "--lr", "nan", "--out", "{root}/o"]),
    ("--lr", [*FIT, "--lr", "inf", "--out", "{root}/o"]),
    ("--lr", [*FIT, "--lr", "fast", "--out", "{root}/o"]),
    ("--momentum", [*FIT, "--momentum", "-1", "--out", "{root}/o"]),
    ("--momentum", [*FIT, "--momentum", "1", "--out", "{root}/o"]),
    ("--weight-decay", [*FIT, "--weight-decay", "-1", "--out", "{root}/o"]),
    ("--lr-gamma", [*FIT, "--lr-gamma", "nan", "--out", "{root}/o"]),
    ("--lr-gamma", [*FIT, "--lr-gamma", "-1", "--out", "{root}/o"]),
    ("--lr-step", [*FIT, "--lr-step", "0", "--out", "{root}/o"]),
    ("--checkpoint-every", [*FIT, "--checkpoint-every", "nan", "--out", "{root}/o"]),
    ("--checkpoint-every", [*FIT, "--checkpoint-every", "-1", "--out", "{root}/o"]),
    ("--info-weight", [*FIT, "--info-weight", "nan", "--out", "{root}/o"]),
    ("--info-weight", [*FIT, "--info-weight", "1", "--out", "{root}/o"]),
    ("--center-crop", [*FIT, "--center-crop", "0", "--out", "{root}/o"]),
    ("--center-crop", [*FIT, "--center-crop", "28", "--out", "{root}/o"]),
    ("--epochs", [*FIT, "--epochs", "0", "--out", "{root}/o"]),
    ("--epochs", [*FIT, "--epochs", "ten", "--out", "{root}/o"]),
    ("--batch-size", [*FIT, "--batch-size", "0", "--out", "{root}/o"]),
    ("--eval-batch-size", [*FIT, "--eval-batch-size", "0", "--out", "{root}/o"]),
    ("--subset", [*FIT, "--subset", "0", "--out", "{root}/o"]),
    ("--subset", [*FIT, "--subset", "999999", "--out", "{root}/o"]),
    ("--test-fraction", [*FIT, "--test-fraction", "1", "--out", "{root}/o"]),
    ("--until-train-acc", [*FIT, "--until-train-acc", "1.5", "--out", "{root}/o"]),
    ("--widths", [*FIT, "--widths", "0", "--out", "{root}/o"]),
    ("--widths", [*FIT, "--widths", "a,b", "--out", "{root}/o"]),
    ("--optimizer", [*FIT, "--optimizer", "rmsprop", "--out", "{root}/o"]),
    ("--schedule", [*FIT, "--schedule", "foo", "--out", "{root}/o"]),
    ("--noise-alpha", [*FIT, "--noise-alpha", "0", "--out", "{root}/o"]),
    ("--alpha-ref", [*FIT, "--alpha-ref", "0", "--out", "{root}/o"]),
    ("--fisher-every", [*FIT, "--fisher-every", "-1", "--out", "{root}/o"]),
    ("--fisher-samples", [*FIT, "--fisher-samples", "0", "--out", "{root}/o"]),
    ("--hist-every", [*FIT, "--hist-every", "-1", "--out", "{root}/o"]),
    ("--save-epochs", [*FIT, "--save-epochs", "0", "--out", "{root}/o"]),
    ("--seed", [*FIT, "--seed", "-1", "--out", "{root}/o"]),
    ("--depth", [*FIT, "--model", "wrn", "--depth", "3", "--out", "{root}/o"]),
    ("--device", [*FIT, "--device", "tpu", "--out", "{root}/o"]),
    ("--augment", ["fit", "--dataset", "tishby", "--augment", "--out", "{root}/o"]),
    ("--model", ["fit", "--dataset", "tishby", "--model", "alexnet-small", "--out", "{root}/o"]),
    ("--data-file", ["fit", "--dataset", "tishby", "--data-file", "{root}/nope.mat", "--out", "{root}/o"]),
    ("--data-root", ["fit", "--dataset", "cifar10", "--data-root", "{root}/runs/empty", "--out", "{root}/o"]),
    # fit: where the run goes, resuming, config files
    ("--out", [*FIT]),
    ("--out", [*FIT, "--out", R + "/fit"]),
    ("--out", [*FIT, "--out", "{root}/a-file"]),
    ("--resume", ["fit", "--resume", "{root}/missing"]),
    ("--out", ["fit", "--resume", R + "/fit", "--out", "{root}/o"]),
    ("--lr", ["fit", "--resume", R + "/fit", "--lr", "0.5"]),
    ("--resume", ["fit", "--resume", R + "/forget"]),
    ("--resume", ["fit", "--resume", R + "/empty"]),
    ("--resume", ["fit", "--resume", R + "/garbage-metrics"]),
    ("--resume", ["fit", "--resume", R + "/garbage-examples"]),
    ("--resume", ["fit", "--resume", R + "/garbage-checkpoint"]),
    ("--resume", ["fit", "--resume", R + "/garbage-config"]),
    ("--resume", ["fit", "--resume", R + "/no-model-checkpoint"]),
    ("--config", [*FIT, "--config", "{root}/missing.toml", "--out", "{root}/o"]),
    ("--config", [*FIT, "--config", "{root}/bad.json", "--out", "{root}/o"]),
    ("--config", [*FIT, "--config", "{root}/list.json", "--out", "{root}/o"]),
    ("--config", [*FIT, "--config", "{root}/bad.toml", "--out", "{root}/o"]),
    ("--epochs", ["fit", "--config", "{root}/typed.toml", "--out", "{root}/o"]),
    ("--bogus", ["fit", "--config", "{root}/unknown.toml", "--out", "{root}/o"]),
    ("--bogus", [*FIT, "--bogus", "1", "--out", "{root}/o"]),
    # forget
    ("--val-corrupt", ["forget", "--dataset", "digits", "--val-corrupt", "labels=3", "--out", "{root}/o"]),
    ("--val-size", ["forget", "--dataset", "digits", "--val-size", "0", "--out", "{root}/o"]),
    ("--val-size", ["forget", "--dataset", "digits", "--val-size", "99999", "--out", "{root}/o"]),
    ("--epochs2", ["forget", "--dataset", "digits", "--epochs2", "-1", "--out", "{root}/o"]),
    ("--lr2", ["forget", "--dataset", "digits", "--lr2", "0", "--out", "{root}/o"]),
    ("--collapse-drop", ["forget", "--dataset", "digits", "--collapse-drop", "1", "--out", "{root}/o"]),
    ("--collapse-window", ["forget", "--dataset", "digits", "--collapse-window", "0", "--out", "{root}/o"]),
    ("--optimizer2", ["forget", "--dataset", "digits", "--optimizer2", "lbfgs", "--out", "{root}/o"]),
    ("--stage2-from", ["forget", "--stage2-from", "{root}/missing.pt", "--out", "{root}/o"]),
    ("--out", ["forget", "--stage2-from", R + "/forget/checkpoints/stage1.pt"]),
    ("--lr", ["forget", "--stage2-from", R + "/forget/checkpoints/stage1.pt", "--lr", "0.5", "--out", "{root}/o"]),
    ("--stage2-from", ["forget", "--stage2-from", R + "/fit/checkpoints/last.pt", "--out", "{root}/o"]),
    ("--stage2-from", ["forget", "--stage2-from", R + "/forget/checkpoints/last.pt", "--out", "{root}/o"]),
    ("--resume", ["forget", "--resume", R + "/fit"]),
    # infoplane
    ("--seeds", [*IP, "--seeds", "x", "--out", "{root}/o"]),
    ("--seeds", [*IP, "--seeds", "1,1", "--out", "{root}/o"]),
    ("--estimators", [*IP, "--estimators", "foo", "--out", "{root}/o"]),
    ("--bin-range", [*IP, "--bin-range", "1,-1", "--out", "{root}/o"]),
    ("--bin-range", [*IP, "--bin-range", "a", "--out", "{root}/o"]),
    ("--n-bins", [*IP, "--n-bins", "1", "--out", "{root}/o"]),
    ("--captures", [*IP, "--captures", "1", "--out", "{root}/o"]),
    ("--kde-var", [*IP, "--kde-var", "0", "--out", "{root}/o"]),
    ("--bin-size", [*IP, "--bin-size", "-1", "--out", "{root}/o"]),
    ("--eval-size", [*IP, "--eval-size", "5", "--out", "{root}/o"]),
    ("--ksg-k", [*IP, "--ksg-k", "0", "--out", "{root}/o"]),
    ("--batch-norm", [*IP, "--vectorize", "--batch-norm", "--out", "{root}/o"]),
    ("--batch-scalars", [*IP, "--vectorize", "--batch-scalars", "--out", "{root}/o"]),
    ("--layers", ["infoplane", "--dataset", "digits", "--model", "alexnet-small", "--out", "{root}/o"]),
    ("--out", [*IP, "--out", R + "/ip"]),
    ("--resume", ["infoplane", "--resume", R + "/fit"]),
    # noise
    ("runs", ["noise", "--out", "{root}/o"]),
    ("runs", ["noise", "{root}/missing", "--out", "{root}/o"]),
    ("runs", ["noise", R + "/ramp", "--out", "{root}/o"]),
    ("runs", ["noise", R + "/ramp/fit", "--out", "{root}/o"]),
    ("runs", ["noise", R + "/garbage-checkpoint", "--out", "{root}/o"]),
    ("runs", ["noise", R + "/fit", R + "/garbage-config", "--out", "{root}/o"]),
    ("--alpha-start", ["noise", R + "/fit", "--alpha-start", "inf", "--out", "{root}/o"]),
    ("--alpha-start", ["noise", R + "/fit", "--alpha-start", "0", "--out", "{root}/o"]),
    ("--alpha-factor", ["noise", R + "/fit", "--alpha-factor", "nan", "--out", "{root}/o"]),
    ("--alpha-factor", ["noise", R + "/fit", "--alpha-factor", "1e300", "--steps", "5", "--out", "{root}/o"]),
    ("--alphas", ["noise", R + "/fit", "--alphas", "0.1,-1", "--out", "{root}/o"]),
    ("--alphas", ["noise", R + "/fit", "--alphas", "a", "--out", "{root}/o"]),
    ("--every", ["noise", R + "/fit", "--every", "0", "--out", "{root}/o"]),
    ("--steps", ["noise", R + "/fit", "--steps", "0", "--out", "{root}/o"]),
    ("--noise-samples", ["noise", R + "/fit", "--noise-samples", "0", "--out", "{root}/o"]),
    ("--out", ["noise", R + "/fit"]),
    ("--out", ["noise", R + "/fit", "--out", R + "/ramp"]),
    ("runs", ["noise", R + "/fit", "--resume", R + "/ramp"]),
    ("--resume", ["noise", "--resume", R + "/fit"]),
    # sweep
    ("file", ["sweep", "{root}/missing.toml"]),
    ("protocol", ["sweep", "{root}/sw-protocol.toml"]),
    ("extra", ["sweep", "{root}/sw-key.toml"]),
    ("bogus", ["sweep", "{root}/sw-field.toml"]),
    ("axes.seed", ["sweep", "{root}/sw-step0.toml"]),
    ("axes.seed", ["sweep", "{root}/sw-backwards.toml"]),
    ("axes.lr", ["sweep", "{root}/sw-num0.toml"]),
    ("axes.seed", ["sweep", "{root}/sw-empty.toml"]),
    ("--model", ["sweep", "{root}/sw-model.toml"]),
    ("--epochs", ["sweep", "{root}/sw-typed.toml"]),
    ("--lr", ["sweep", "{root}/sw-lr.toml"]),
    ("--out", ["sweep", "{root}/sw-noout.toml"]),
    ("axes.seed", ["sweep", "{root}/sw-range.toml"]),
    ("--jobs", ["sweep", "{root}/sw-lr.toml", "--jobs", "0"]),
    ("--executor", ["sweep", "{root}/sw-lr.toml", "--executor", "slurm"]),
    # report, plot, examples
    ("runs", ["report", "{root}/missing", "--out", "{root}/r.html"]),
    ("runs", ["report", R + "/empty", "--out", "{root}/r.html"]),
    ("runs", ["plot", "{root}/missing"]),
    ("runs", ["plot", R + "/empty"]),
    ("runs", ["plot", R + "/garbage-metrics"]),
    ("runs", ["examples", R + "/noex"]),
    ("runs", ["examples", R + "/garbage-examples"]),
    ("runs", ["examples", "{root}/missing"]),
    # reproduce, and the command line itself
    ("NAME", ["reproduce", "no-such-study"]),
    ("NAME", ["reproduce"]),
    ("--scale", ["reproduce", "zhang-table1", "--scale", "cpu"]),
    ("--scale", ["reproduce", "zhang-fig1", "--scale", "huge"]),
    ("--jobs", ["reproduce", "zhang-fig1", "--jobs", "0"]),
    ("--epochs", ["replay", R + "/fit", "--epochs", "0"]),
    ("runs", ["replay", "{root}/nowhere"]),
    ("RUN", ["replay", R + "/ramp/" + "fit"]),
    ("command", []),
    ("invalid choice", ["train"]),
]


@pytest.mark.parametrize("name,argv", CASES, ids=[f"{i:03d}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input(ws, name, argv, capsys):
    argv = [a.replace("{root}", str(ws)) for a in argv]
    before = snapshot(ws)
    try:
        code = main(argv)
    except SystemExit as e:   # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("rotelab"), err
    assert "Traceback" not in err
    assert name in err, err
    assert snapshot(ws) == before


def test_the_table_covers_every_command():
    import argparse
    from rotelab.cli import make_parser
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    takes_input = set(sub.choices) - {"datasets", "models"}   # listings take no input
    assert takes_input <= {c[1][0] for c in CASES if c[1]}
