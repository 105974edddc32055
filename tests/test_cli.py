"""The command line stays instant: no heavy library is imported to parse arguments or show help."""

from __future__ import annotations

import subprocess
import sys


def test_help_imports_no_heavy_library():
    code = ("import sys; from click.testing import CliRunner; from tracked_train.cli import main\n"
            "for args in (['--help'], ['run', '--help'], ['resume', '--help'], ['compare', '--help']):\n"
            "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
            "print(sorted({'torch', 'mlflow', 'wandb', 'datasets', 'sentencepiece', 'matplotlib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "tracked_train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "resume" in r.stdout and "generate" in r.stdout
