"""What the person at the terminal sees: lines that fit, on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from conftest import sets

from tracked_train.console import fit


def test_fit_drops_the_last_fields_first():
    line = "eval step 20 | val loss 4.8256 | val ppl 124.67 | 2.392 nats/char | rss 434 MiB"
    assert fit(line, 200) == line
    assert fit(line, 50) == "eval step 20 | val loss 4.8256 | val ppl 124.67"
    assert fit("  data    source=builtin hf_name=None", 30) == "  data    source=builtin\n          hf_name=None"


def test_on_a_terminal_every_line_fits_its_width(tmp_path):
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 72, 0, 0))  # a 72-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "t",
                             *sets("training.max_steps=10", "training.eval_every=5")],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=child, stderr=child,
                            env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")})
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0
    lines = out.decode(errors="replace").replace("\r\n", "\n").split("\n")
    assert any(line.startswith("eval step 5 | val loss") for line in lines)
    assert [line for line in lines if len(line) > 72] == []
    full = (tmp_path / "runs" / "t" / "train.log").read_text()
    assert max(len(line) for line in full.splitlines()) > 72  # the file keeps them whole


def test_typed_status_and_stop_act_like_sigusr1_and_sigint(tmp_path):
    import json
    import threading

    from conftest import wait_until

    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tracked_train", "run", "--run-name", "s",
                             *sets("training.max_steps=100000", "training.eval_every=100000")],
                            cwd=tmp_path, stdin=child, stdout=child, stderr=child)
    os.close(child)
    out = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                return
            if not chunk:
                return
            out.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    metrics = tmp_path / "runs" / "s" / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and metrics.read_text().count("train/loss") >= 3, "three steps", 120, proc)
    os.write(main, b"status\n")
    wait_until(lambda: b"\nstep " in bytes(out).replace(b"\r", b""), "a status line", 120, proc)
    os.write(main, b"stop\n")
    assert proc.wait(timeout=120) == 130
    reader.join(timeout=10)
    text = bytes(out).decode(errors="replace")
    assert "the stop command: stopping after this step" in text
    stop = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
    assert stop["reason"] == "interrupted" and "the stop command" in stop["detail"]


def test_off_a_terminal_stdin_is_never_read(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tracked_train", "run", "--run-name", "p",
                           *sets("training.max_steps=8", "training.eval_every=4")],
                          cwd=tmp_path, input="stop\nstop\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "stop command" not in proc.stderr and "Completed" in proc.stderr
