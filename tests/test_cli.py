"""The `rotelab` command: help, config files, errors (a real SIGKILL + --resume of every protocol is in
test_conformance.py)."""

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from rotelab.cli import main
from rotelab.config import FitConfig, flag

FAST = ["--dataset", "digits", "--epochs", "2", "--no-progress", "--hist-every", "0"]


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_help_lists_every_config_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(FitConfig):
        assert flag(f.name) in text, f.name
    assert "(default: digits)" in text and "--no-augment" in text


def test_fit_writes_a_run_and_config_file_is_overridden_by_flags(tmp_path, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text('dataset = "digits"\nepochs = 5\nlr = 0.2\nwidths = "32,16"\n')
    assert main(["fit", "--config", str(conf), "--epochs", "2", "--no-progress", "--hist-every", "0",
                 "--out", str(tmp_path / "r")]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["lr"] == 0.2 and cfg["model_args"]["widths"] == [32, 16]
    assert "done after 2 epochs" in capsys.readouterr().out


BAD = [
    (["--dataset", "imagenet"], "--dataset"),
    (["--model", "resnet9000"], "--model"),
    (["--corrupt", "blur=0.3"], "--corrupt"),
    (["--corrupt", "labels=1.5"], "--corrupt"),
    (["--dataset", "cifar10", "--data-root", "nowhere"], "--data-root"),
    (["--model", "wrn", "--dataset", "mnist1d"], "--model"),
    (["--epochs", "0"], "--epochs"),
    (["--augment", "--dataset", "mnist1d"], "--augment"),
]


@pytest.mark.parametrize("extra,field", BAD)
def test_bad_input_gives_one_line_exit_2_and_touches_nothing(tmp_path, capsys, extra, field):
    out = tmp_path / "existing"
    assert main(["fit", *FAST, "--out", str(out)]) == 0
    before = tree_digest(out)
    capsys.readouterr()
    code = main(["fit", *FAST, *extra, "--out", str(tmp_path / "new")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("rotelab: error: " + field)
    assert not (tmp_path / "new").exists()
    assert tree_digest(out) == before


def test_existing_out_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["fit", *FAST, "--out", str(out)]) == 0
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["fit", *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--resume" in err and "--overwrite" in err
    assert tree_digest(out) == before
    assert main(["fit", *FAST, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["fit", *FAST, "--out", str(out)]) == 0
    status = json.loads((out / "status.json").read_text())
    status["state"] = "running"
    (out / "status.json").write_text(json.dumps(status))
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["fit", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rotelab: error: --resume") and "last.pt" in err and len(err.splitlines()) == 1
    assert tree_digest(out) == before


def test_resume_refuses_new_config_flags(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["fit", *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["fit", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "--lr" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_and_plot(tmp_path):
    out = tmp_path / "r"
    r = subprocess.run(["rotelab", "fit", *FAST, "--corrupt", "labels=1.0", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["rotelab", "plot", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("curves.png", "overlap.png"):
        png = out / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def readme_commands():
    """Every `rotelab ...` command in the README's bash blocks, continuation lines joined."""
    import re
    import shlex
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part.split("  #")[0])
                if words and words[0] == "rotelab":
                    commands.append(words[1:])
    return commands


def test_every_readme_command_parses_and_its_config_is_valid():
    """The README's commands name real flags with valid values (a flag renamed in the code fails here)."""
    from rotelab.cli import config_from_args, make_parser
    from rotelab.protocol import get_protocol, load_protocols
    commands = readme_commands()
    assert len(commands) >= 10
    for words in commands:
        args = make_parser().parse_args(words)
        if words[0] in load_protocols() and not getattr(args, "resume", None):
            config_from_args(args, get_protocol(words[0]).config).validate()
