"""Progress on long work (codegen/progress.py): bars on a terminal's stderr, nothing when piped, with --quiet or
for a library caller, stdout and results unchanged, no measurable cost when off."""
from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from codegen import progress

QGEN = [sys.executable, "-m", "codegen.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(args, cwd) -> tuple[int, str, str]:
    """qgen with stderr on a pseudo-terminal (as in an interactive shell) and stdout on a pipe."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "QGEN_PROGRESS"}
    env["TERM"], env["COLUMNS"] = "xterm-256color", "120"
    proc = subprocess.Popen([*QGEN, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain():  # the child blocks on a full pty buffer unless its stderr is read while it runs
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    (d / "m.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def make_model():
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    """))
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.random((40, 1, 8, 8)).astype(np.float32))
    np.save(d / "y.npy", rng.integers(0, 10, 40))
    return d


@pytest.fixture(scope="module")
def terminal_compile(workdir):
    """`qgen compile` with compression fine-tuning, stderr on a terminal: shared by the tests below."""
    return run_on_terminal(["compile", "m.py:make_model", "--input-shape", "1,1,8,8", "--calib", "x.npy",
                            "--out", "out", "--prune", "0.5", "--finetune-epochs", "2", "--train", "x.npy",
                            "--labels", "y.npy"], workdir)


def test_terminal_shows_compile_and_epoch_progress_on_stderr(terminal_compile):
    status, out, err = terminal_compile
    assert status == 0, err
    text = ANSI.sub("", err)
    assert "compile" in text and "done" in text  # the top-level row, left in its final state
    assert re.search(r"fine-tune: epoch 1/2 loss \d+\.\d{4}", text) and "epoch 2/2 loss" in text
    assert ANSI.search(err)  # live bars (cursor movement), not plain lines
    # stdout is what it is without a terminal: the report table and the 'wrote' line, no escape codes, no progress
    assert "wrote out/" in out and not ANSI.search(out) and "epoch" not in out and "pass " not in out


def test_terminal_verify_shows_progress_and_quiet_shows_none(workdir, terminal_compile):
    assert terminal_compile[0] == 0
    status, out, err = run_on_terminal(["verify", "out"], workdir)
    assert status == 0 and "bit-exact: yes (40/40" in out
    assert "verify C == reference" in ANSI.sub("", err)
    for args in (["--quiet", "verify", "out"], ["verify", "out", "-q"]):
        status, out_q, err_q = run_on_terminal(args, workdir)
        assert status == 0 and out_q == out
        assert err_q == ""


def test_piped_shows_no_progress(workdir, terminal_compile):
    assert terminal_compile[0] == 0
    done = subprocess.run([*QGEN, "verify", "out"], cwd=workdir, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "QGEN_PROGRESS"})
    assert done.returncode == 0 and "bit-exact: yes" in done.stdout
    assert done.stderr == ""


def test_cli_in_process_with_captured_stderr_is_silent(workdir, capfd, monkeypatch):
    from codegen import cli

    monkeypatch.delenv("QGEN_PROGRESS", raising=False)
    monkeypatch.chdir(workdir)
    status = cli.main(["compile", "m.py:make_model", "--input-shape", "1,1,8,8", "--calib", "x.npy", "--out",
                       "out_inproc"])
    captured = capfd.readouterr()
    assert status == 0 and "wrote out_inproc/" in captured.out
    assert captured.err == ""


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_library_calls_print_nothing_by_default(capfd):
    import codegen
    from codegen import compress, qat
    from codegen.options import CompileOptions

    assert progress.mode() == "off"
    x = np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 4, 32)
    options = CompileOptions(compress=compress.parse_cli(prune=0.5, finetune_epochs=1))
    result = codegen.compile(tiny_model(), (1, 8), x, options=options, train=(x, y))  # passes + fine-tune epochs
    assert result.verify().exact
    qm = qat.prepare(tiny_model(), torch.zeros(1, 8), x)
    qat.finetune(qm, x, y, epochs=1, batch=16)
    qat.compile(qm, eval_data=x)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_qat_epochs_with_loss_and_unchanged_results():
    """Plain mode (CI logs): one line per epoch with its loss; the trained weights equal a silent run's."""
    from codegen import qat

    x = np.random.default_rng(1).standard_normal((48, 8)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 4, 48)
    silent = qat.finetune(qat.prepare(tiny_model(), torch.zeros(1, 8), x), x, y, epochs=2, batch=16)
    log = io.StringIO()
    with progress.enabled("plain", log):
        shown = qat.finetune(qat.prepare(tiny_model(), torch.zeros(1, 8), x), x, y, epochs=2, batch=16)
    lines = log.getvalue().splitlines()
    assert [re.sub(r"loss \d+\.\d{4}", "loss L", s) for s in lines if "epoch" in s] == \
        ["QAT: epoch 1/2 loss L", "QAT: epoch 2/2 loss L"], lines
    assert not ANSI.search(log.getvalue())
    for a, b in zip(silent.parameters(), shown.parameters()):
        assert torch.equal(a, b)
    log = io.StringIO()
    with progress.enabled("rich", log):  # rich into a stream of the caller's: the notes stay printed
        qat.finetune(qat.prepare(tiny_model(), torch.zeros(1, 8), x), x, y, epochs=1, batch=16)
    assert "QAT: epoch 1/1 loss" in ANSI.sub("", log.getvalue())
    assert progress.mode() == "off" and progress._live is None and not progress._open


def test_rich_compile_same_files_and_exceptions_pass_through():
    import codegen
    from codegen.errors import UserError

    x = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    quiet = codegen.compile(tiny_model(), (1, 8), x, prefix="net")
    log = io.StringIO()
    with progress.enabled("rich", log):
        shown = codegen.compile(tiny_model(), (1, 8), x, prefix="net")
        with pytest.raises(UserError, match="prefix"):
            codegen.compile(tiny_model(), (1, 8), x, prefix="1bad")
    assert shown.files == quiet.files
    assert "compile" in ANSI.sub("", log.getvalue())
    assert progress._live is None and not progress._open  # the live display stopped after the error too


def test_cli_mode():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    with pytest.MonkeyPatch.context() as mp:
        for k in ("QGEN_PROGRESS", "TERM"):
            mp.delenv(k, raising=False)
        assert progress.cli_mode(stream=Tty()) == "rich"
        assert progress.cli_mode(stream=io.StringIO()) == "off"  # piped
        assert progress.cli_mode(quiet=True, stream=Tty()) == "off"
        mp.setenv("TERM", "dumb")
        assert progress.cli_mode(stream=Tty()) == "plain"
        mp.setenv("QGEN_PROGRESS", "plain")
        assert progress.cli_mode(stream=io.StringIO()) == "plain"
        assert progress.cli_mode(quiet=True, stream=io.StringIO()) == "off"
    with pytest.raises(ValueError, match="progress mode"):
        progress.configure("loud")


def test_off_costs_nothing_measurable():
    """Reports are per pass / batch / sample, never per element: even 100,000 of them cost well under a second
    when off (about a microsecond each), the whole of a ResNet-18 compile makes a few hundred."""
    assert progress.mode() == "off"
    start = time.perf_counter()
    for _ in range(1000):
        with progress.task("t", total=100) as bar:
            for _ in range(100):
                bar.advance()
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    with progress.enabled("rich", io.StringIO()):  # on: a row update is cheap too (rendering is 5 times a second)
        with progress.task("t", total=10_000) as bar:
            for _ in range(10_000):
                bar.advance()
    assert time.perf_counter() - start < 2.0
