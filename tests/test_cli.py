"""The command line: bad usage and a missing training extra are one `error:` line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_guard.cli import app

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args, words", [
    (["bench", "--iterashuns", "3"], "No such option: --iterashuns"),
    (["export", "runs/x", "--out", "y", "--precision", "int4"], "'int4' is not one of 'fp32', 'fp16', 'int8'"),
    (["evaluate", "--models", "runs/x", "--split", "train"], "'train' is not one of 'val', 'test'"),
    (["vaccinate", "--base", "b.pt", "--subsampling", "411"], "'411' is not one of '420', '422', '444'"),
    (["infer"], "Missing argument 'SOURCE...'"),
])
def test_usage_errors_are_one_line_with_exit_code_2(args, words):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.output
    assert "Traceback" not in result.output


def test_help_and_no_arguments_print_help_with_exit_code_0():
    for args in ([], ["--help"], ["export", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and "Usage:" in result.output, (args, result.output)


def test_training_command_without_the_training_extra_names_the_extra():
    # torch made unimportable in a fresh interpreter: what a runtime-only install sees
    script = ("import sys; sys.modules['torch'] = None\n"
              "from edge_guard.cli import app\n"
              "app(['train', '--data', 'nowhere'])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and 'edge-guard[train]' in lines[0], result.stderr
