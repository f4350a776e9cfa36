"""The per-layer table a user reads in a terminal: every number whole at any width, and quiet on a closed pipe."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from codegen import report

LONG_NAMES = ["conv1", "features.3.block.0.depthwise", "fc", "classifier.head.linear_out"]


def fake_report() -> dict:
    layers = [dict(index=i, name=name, op=op, shape=[16, 16, 128], q_in="s8.f5", q_weights="s8.f7..f9",
                   q_out="s16.f12", macs=12_345_678, weight_bytes=123_456, activation_bytes=32_768,
                   max_abs_error=0.0123, sqnr_db=38.25)
              for i, (name, op) in enumerate(zip(LONG_NAMES, ["conv2d", "depthwise_conv2d", "linear", "linear"]))]
    return dict(model="Net", prefix="net", layers=layers, arena_bytes=1_680, flash_bytes=3_954, macs=80_896,
                input=dict(shape=[1, 1, 8, 8], qformat="s8.f4"), samples=4)


def render(r: dict, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), record=True)
    report.print_table(r, console)
    return console.export_text()


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_table_fits_and_never_cuts_a_number(width):
    text = render(fake_report(), width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    flat = text.replace("\n", "")
    shown = [c for c in ("MACs", "wt B", "SQNR", "Q w", "act B", "Q in", "max err") if f" {c} " in text.split("\n")[2]]
    for cell, column in (("12,345,678", "MACs"), ("123,456", "wt B"), ("38.2", "SQNR"), ("s8.f7..f9", "Q w"),
                         ("32,768", "act B"), ("0.0123", "max err")):
        if column in shown:
            assert text.count(cell) >= len(LONG_NAMES), (column, text)  # whole, on every row
    for name in LONG_NAMES:  # long names wrap; all their characters are there, in order
        assert name in flat.replace(" ", "") or all(part in flat for part in name.split("."))
    if width >= 80:
        assert {"MACs", "wt B"} <= set(shown)
    if len(shown) < 7:  # what is left out is said
        assert "not shown at" in text and "see report.md" in text


def test_table_keeps_every_column_when_wide():
    text = render(fake_report(), 200)
    assert "not shown" not in text
    for cell in ("12,345,678", "123,456", "38.2", "s8.f7..f9", "32,768", "s8.f5", "0.0123"):
        assert cell in text


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory):
    import codegen

    out = tmp_path_factory.mktemp("pipe") / "m"
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    codegen.compile(model, torch.zeros(1, 6), torch.randn(8, 6).numpy(), prefix="m", out_dir=out)
    return out


def test_closed_pipe_is_quiet(compiled_dir):
    """`qgen report DIR | head -1`: the reader is gone before qgen writes; no traceback, no "internal error"."""
    proc = subprocess.Popen([sys.executable, "-m", "codegen.cli", "report", str(compiled_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `head -1` after its line: every write of qgen now meets a closed pipe
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=120)
    assert "Traceback" not in err and "internal error" not in err and "BrokenPipe" not in err, err
    assert status == 141


def test_report_through_head(compiled_dir):
    proc = subprocess.run(f"'{sys.executable}' -m codegen.cli report '{compiled_dir}' | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stderr == "" and proc.stdout.strip().startswith("qgen:")


def test_bad_command_line_is_a_user_error():
    """argparse's own exit status is 2, which qgen keeps for internal errors: a bad flag is a user error (1)."""
    proc = subprocess.run([sys.executable, "-m", "codegen.cli", "compile", "m.pt2", "--no-such-flag"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "unrecognized arguments: --no-such-flag" in proc.stderr
    assert "Traceback" not in proc.stderr
