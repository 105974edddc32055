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


def test_read_only_commands_create_no_store(tmp_path):
    """No MLFLOW_TRACKING_URI and no mlflow.db: generate, export, runs and compare say so and leave it empty."""
    from conftest import cli

    run_id = "0123456789abcdef0123456789abcdef"
    for args in (["generate", f"mlflow:{run_id}", "--prompt", "a"], ["export", f"runs:/{run_id}", "--out", "x"],
                 ["compare", run_id, "b"]):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert cli("runs", cwd=tmp_path).returncode == 0
    assert list(tmp_path.iterdir()) == []
