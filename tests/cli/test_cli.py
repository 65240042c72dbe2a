"""The command line: bad input gives one line, exit code 2, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run(*args, check_rc=None):
    proc = subprocess.run([sys.executable, "-m", "edgesplit", *args], capture_output=True, text=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("edgesplit: error:")]
    assert len(lines) == 1 and pattern in lines[0], proc.stderr


def _subcommands(parser, prefix=()):
    """Every command path the parser has (``bench serve`` included), read from argparse itself."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_help_everywhere(capsys):
    from edgesplit.cli import build_parser, main

    assert "COMMAND" in run("--help", check_rc=0).stdout
    commands = list(_subcommands(build_parser()))
    assert {("hls",), ("estimate",), ("bench", "serve"), ("worker",)} <= set(commands)
    for cmd in commands:
        with pytest.raises(SystemExit) as done:
            main([*cmd, "--help"])
        assert done.value.code == 0 and "usage: edgesplit " + " ".join(cmd) in capsys.readouterr().out, cmd


def test_models_and_profile_json(tmp_path):
    out = json.loads(run("models", "--input", "1x28x28", "--num-classes", "10", "--json", check_rc=0).stdout)
    names = [m["model"] for m in out["models"]]
    assert "resnet18-split2" in names and "alexnet" in names
    prof = json.loads(run("profile", "resnet18-split2", "--input", "1x28x28", "--num-classes", "10", "--json", check_rc=0).stdout)
    assert prof["communication"]["uint8"]["split"]["input_broadcast_bytes"] == 2 * 784
    assert [b["name"] for b in prof["profile"]["branches"]] == ["branch0", "branch1", "head"]


@pytest.mark.parametrize(
    "args,pattern",
    [
        (("profile", "resnet19"), "unknown model 'resnet19'"),
        (("profile", "resnet18", "--input", "224x224"), "bad input shape"),
        (("train", "resnet18", "--data-dir", "/nonexistent", "--out", "{tmp}/r"), "does not exist"),
        (("eval", "{tmp}/missing"), "not found"),
        (("predict", "{tmp}", "x.png"), "has no manifest.json"),
        (("train", "resnet18", "--model-arg", "width", "--out", "{tmp}/r"), "bad --model-arg"),
        (("train", "resnet18", "--model-arg", "depth=3", "--out", "{tmp}/r"), "has no argument depth; its arguments: stem"),
        (("train", "resnet18", "--input-size", "32", "--out", "{tmp}/r"), "bad --input"),
        (("train", "resnet18", "--epochs", "0", "--out", "{tmp}/r"), "--epochs must be at least 1"),
        (("train", "resnet18-split2", "--branch-dropout", "1.5", "--out", "{tmp}/r"), "--branch-dropout must be in"),
        (("serve", "--plan", "{tmp}/plan.yaml", "--poll-ms", "2"), "only goes with --local"),
        (("bench", "serve", "--poll-ms", "-1"), "--poll-ms must be 0 or more"),
    ],
)
def test_bad_input_one_line(tmp_path, args, pattern):
    assert_one_line_error(run(*(a.format(tmp=tmp_path) for a in args)), pattern)


def test_checkpoint_of_other_model_via_cli(tiny_run, tmp_path):
    import torch

    ckpt = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    ckpt["model"] = "resnet18-split3"
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    assert_one_line_error(run("export", str(tmp_path), "--out", str(tmp_path / "e")), "do not fit model 'resnet18-split3'")


def test_export_and_predict_cli(tiny_run, tmp_path):
    from PIL import Image

    from edgesplit.data import load_dataset

    proc = run("export", str(tiny_run), "--out", str(tmp_path / "e"), check_rc=0)
    assert "branch0.onnx, branch1.onnx, head.onnx" in proc.stdout
    img = load_dataset("fashion-mnist", "test").data[0, :, :, 0]
    Image.fromarray(img).save(tmp_path / "x.png")
    proc = run("predict", str(tmp_path / "e"), str(tmp_path / "x.png"), check_rc=0)
    assert proc.stdout.count(",") == 2 and "note:" not in proc.stderr  # top-3 classes; a 28x28 grey image as it is
    Image.fromarray(np.stack([np.kron(img, np.ones((2, 3), np.uint8))] * 3, axis=-1)).save(tmp_path / "rgb.png")
    proc = run("predict", str(tmp_path / "e"), str(tmp_path / "rgb.png"), check_rc=0)
    assert proc.stdout.count(",") == 2
    assert "converted from RGB to grey and resized from 84x56 to 28x28 (squashed: the aspect ratio is not kept)" in proc.stderr
    with open(tmp_path / "e" / "head.onnx", "ab") as f:
        f.write(b"x")
    assert_one_line_error(run("predict", str(tmp_path / "e"), str(tmp_path / "x.png")), "sha256")


# ------------------------------------------------------------------ issue 24: security flags, --model-arg syntax
def test_a_token_on_the_command_line_is_refused_without_echoing_it():
    proc = run("worker", "some-export", "--part", "branch0", "--token", "s3cret-value")
    assert_one_line_error(proc, "there is no --token option")
    assert "s3cret-value" not in proc.stdout + proc.stderr and "--token-file" in proc.stderr


def test_no_option_is_taken_by_a_prefix():
    proc = run("worker", "some-export", "--part", "branch0", "--token-f", "x")
    assert proc.returncode == 2 and "unrecognized arguments: --token-f" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "content,mode,pattern",
    [(None, 0o600, "does not exist"), ("", 0o600, "is empty"), ("  \n", 0o600, "is empty"), ("s3cret", 0o644, "chmod 600")],
)
def test_a_missing_empty_or_world_readable_token_file_is_one_line(tiny_export, tmp_path, content, mode, pattern):
    token = tmp_path / "token.txt"
    if content is not None:
        token.write_text(content)
        token.chmod(mode)
    proc = run("worker", str(tiny_export), "--part", "branch0", "--token-file", str(token))
    assert_one_line_error(proc, pattern)


def test_the_refusal_to_bind_names_real_options():
    from edgesplit.errors import EdgesplitError
    from edgesplit.runtime.transport.grpc_server import ServerSecurity

    with pytest.raises(EdgesplitError) as err:
        ServerSecurity().check_bind("0.0.0.0")
    assert "--token-file" in str(err.value) and "--token," not in str(err.value)


def test_model_args_take_lists_both_ways_and_unknown_keys_list_the_valid_ones():
    a = json.loads(
        run(
            "profile",
            "resnet18-split2",
            "--input",
            "1x28x28",
            "--num-classes",
            "10",
            "--json",
            "--model-arg",
            "branch_widths=0.75,0.25",
            check_rc=0,
        ).stdout
    )
    b = json.loads(
        run(
            "profile",
            "resnet18-split2",
            "--input",
            "1x28x28",
            "--num-classes",
            "10",
            "--json",
            "--model-arg",
            "branch_widths=[0.75,0.25]",
            check_rc=0,
        ).stdout
    )
    assert a == b and a["profile"]["branches"][0]["params"] > a["profile"]["branches"][1]["params"]
    proc = run("profile", "resnet18-split2", "--input", "1x28x28", "--model-arg", "nope=1")
    assert_one_line_error(proc, "has no argument nope; its arguments:")
    assert "branch_widths" in proc.stderr and "TypeError" not in proc.stderr


def test_a_plan_written_in_another_folder_is_read_back(tiny_export, tmp_path):
    """`edgesplit plan` writes the export relative to the plan file, which is how `serve` and `connect` read it."""
    from edgesplit.errors import EdgesplitError
    from edgesplit.runtime.plan import load_plan

    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgesplit",
            "plan",
            str(tiny_export),
            "--workers",
            "127.0.0.1:1",
            "127.0.0.1:2",
            "--out",
            "plans/p.yaml",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    plan = load_plan(work / "plans" / "p.yaml")
    assert Path(plan.export).resolve() == Path(tiny_export).resolve()
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text((work / "plans" / "p.yaml").read_text())  # the same text one folder up: its export is not there
    with pytest.raises(EdgesplitError, match="read relative to the plan's folder"):
        load_plan(moved)


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from edgesplit.cli import build_parser

    def undocumented(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from undocumented(sub, (*path, name))
            elif not action.help and action.dest != "help":
                yield " ".join(path) + " " + (action.option_strings[0] if action.option_strings else action.dest)
            elif action.option_strings and not (
                action.nargs == 0  # a flag
                or action.default is None
                or action.default is False
                or action.default is argparse.SUPPRESS
                or (isinstance(action.default, (str, tuple)) and not action.default)  # nothing to show
            ):
                shown = parser._get_formatter()._get_help_string(action)
                if "default" not in shown:  # every default is in the help a user reads (written, or appended)
                    yield " ".join(path) + " " + action.option_strings[0] + " (default not shown)"

    assert list(undocumented(build_parser())) == []


def test_plan_speeds_that_are_not_numbers_are_one_line(tiny_export, tmp_path):
    proc = run(
        "plan",
        str(tiny_export),
        "--workers",
        "127.0.0.1:1",
        "127.0.0.1:2",
        "--speeds",
        "1,fast",
        "--out",
        str(tmp_path / "p.yaml"),
    )
    assert_one_line_error(proc, "bad --speeds '1,fast'")


def test_a_closed_pipe_ends_quietly():
    """`edgesplit ... | head`: the reader is gone when the command writes; it ends quietly, exit 0."""
    script = """
import os, sys
r, w = os.pipe()
os.close(r)  # no reader: every write fails with EPIPE
os.dup2(w, 1)
from edgesplit.cli import main
sys.stderr.write(f"code={main(['models', '--input', '1x28x28'])}\\n")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "code=0" in proc.stderr and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_json_means_the_same_in_every_command(tmp_path):
    """`--json` alone: the JSON alone on stdout (the summary on stderr); `--json FILE`: the file, and the summary."""
    alone = run("devices", "--json", check_rc=0)
    assert "pynq-z1" in json.loads(alone.stdout) and "description" in alone.stderr
    to_file = run("devices", "--json", str(tmp_path / "d.json"), check_rc=0)
    assert "description" in to_file.stdout and "pynq-z1" in json.loads((tmp_path / "d.json").read_text())
    import argparse

    from edgesplit.cli import build_parser

    def json_options(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from json_options(sub, (*path, name))
            elif "--json" in action.option_strings:
                yield " ".join(path), action.nargs, action.const

    options = list(json_options(build_parser()))
    assert len(options) >= 14 and all(o[1:] == ("?", "-") for o in options), options


def test_a_broken_pipe_of_the_command_itself_is_not_swallowed(monkeypatch):
    """Only our own reader leaving ends quietly: a BrokenPipeError from a socket the command writes to is a failure
    (it once made `bench abuse` exit 0 without printing anything)."""
    import edgesplit.cli.models as models_cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    from edgesplit.cli import main

    monkeypatch.setattr(models_cli, "cmd_models", broken)
    with pytest.raises(BrokenPipeError):
        main(["models"])


def test_building_the_parser_loads_nothing_heavy():
    """`edgesplit worker` sets its process up (one BLAS thread, the heap) before numpy loads, so reading its options
    must not load numpy; no command's options load torch, onnx, grpc or yaml either."""
    code = (
        "import sys; from edgesplit.cli import build_parser; build_parser(); "
        "bad = [m for m in ('numpy', 'torch', 'onnx', 'grpc', 'yaml') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
