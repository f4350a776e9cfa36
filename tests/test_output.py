"""The output directory is never lost (codegen/output.py): a run killed at any step, two runs into the
same --out, SIGTERM, and the temporary directories of `qgen firmware` and `CompileResult.verify()`.

Kills are deterministic: `codegen.output._step(name)` runs between the steps of a write, and a forked
child replaces it to SIGKILL itself at one step (no Python cleanup runs, exactly like `kill -9`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

import codegen.output as output
from codegen.errors import UserError
from codegen.output import OUTPUT_MARKER, write_atomic

OLD = {"a.txt": "old a", "sub/b.txt": "old b"}
NEW = {"a.txt": "new a", "sub/b.txt": "new b", "c.bin": b"new c"}
THIRD = {"a.txt": "third a"}
STEPS = ["locked", "created", "written", "moved-old", "swapped", "cleaned"]  # moved-old: two-rename fallback only
BEFORE_SWAP = {"locked", "created", "written", "moved-old"}
NO_HOOK = output._step


def tree(root: Path) -> dict[str, bytes] | None:
    """Every file under root with its bytes (None if root is missing), without the marker."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != OUTPUT_MARKER}


def as_tree(files: dict[str, str | bytes]) -> dict[str, bytes]:
    return {k: v.encode() if isinstance(v, str) else v for k, v in sorted(files.items())}


def fork_child(fn) -> int:
    """Start fn in a forked child and return its pid; the child exits 0, or 70 on an exception."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def in_child(fn) -> int:
    """Run fn in a forked child; its exit code (-9 if it SIGKILLed itself, 70 on an exception)."""
    return wait_child(fork_child(fn))


def kill_at(step: str):
    def hook(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def interrupt_at(step: str):
    def hook(name: str) -> None:
        if name == step:
            raise KeyboardInterrupt
    return hook


@pytest.fixture(params=["exchange", "fallback"])
def mode(request, monkeypatch, tmp_path):
    """The atomic exchange (renameat2), and the two-rename fallback for kernels/filesystems without it."""
    if request.param == "exchange":
        a, b = tmp_path / "probe-a", tmp_path / "probe-b"
        a.mkdir(), b.mkdir()
        if not output._exchange(a, b):
            pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
        a.rmdir(), b.rmdir()
    else:
        monkeypatch.setattr(output, "_exchange_supported", False)
    return request.param


def steps_of(mode: str) -> list[str]:
    return STEPS if mode == "fallback" else [s for s in STEPS if s != "moved-old"]


@pytest.mark.parametrize("had_output", [True, False], ids=["replace", "first-write"])
def test_killed_at_every_step_keeps_old_or_new_and_next_run_recovers(tmp_path, monkeypatch, mode, had_output):
    for step in steps_of(mode):
        if step == "moved-old" and not had_output:
            continue
        root = tmp_path / step
        root.mkdir()
        out = root / "out"
        if had_output:
            write_atomic(OLD, out)
        old = as_tree(OLD) if had_output else None

        def second(step=step, out=out):
            output._step = kill_at(step)
            write_atomic(NEW, out)

        assert in_child(second) == -signal.SIGKILL, step
        leftovers = sorted(p.name for p in root.iterdir() if p.name != "out")
        assert ".out.qgen-lock" in leftovers, step  # the kill did land inside the locked write
        after_kill = tree(out)
        if step == "moved-old":  # only in the fallback: out is missing, the .old-* is the journal
            assert after_kill is None and any(".old-" in n for n in leftovers)
        else:
            assert after_kill == (old if step in BEFORE_SWAP else as_tree(NEW)), step
        expected = old if step in BEFORE_SWAP else as_tree(NEW)

        # the next run (even one interrupted before its own swap) recovers: old or new, nothing else left
        monkeypatch.setattr(output, "_step", interrupt_at("written"))
        with pytest.raises(KeyboardInterrupt):
            write_atomic(THIRD, out)
        assert tree(out) == expected, step
        assert sorted(p.name for p in root.iterdir()) == (["out"] if expected is not None else []), step
        monkeypatch.setattr(output, "_step", NO_HOOK)
        write_atomic(THIRD, out)
        assert tree(out) == as_tree(THIRD)
        assert sorted(p.name for p in root.iterdir()) == ["out"], step


def test_next_run_restores_the_old_output_before_anything_else(tmp_path, monkeypatch):
    """Fallback killed between its two renames (--out missing); the next run restores --out first thing:
    even when that run is killed too, right after taking the lock."""
    monkeypatch.setattr(output, "_exchange_supported", False)
    out = tmp_path / "out"
    write_atomic(OLD, out)
    for step in ("moved-old", "locked"):
        def run(step=step):
            output._step = kill_at(step)
            write_atomic(NEW, out)
        assert in_child(run) == -signal.SIGKILL
    assert tree(out) == as_tree(OLD)


def test_interrupted_at_every_step_cleans_up_at_once(tmp_path, monkeypatch, mode):
    """KeyboardInterrupt (Ctrl-C; SIGTERM in the CLI) at each step: old or new output, no temporary left."""
    for step in steps_of(mode):
        root = tmp_path / step
        root.mkdir()
        out = root / "out"
        write_atomic(OLD, out)
        monkeypatch.setattr(output, "_step", interrupt_at(step))
        with pytest.raises(KeyboardInterrupt):
            write_atomic(NEW, out)
        monkeypatch.setattr(output, "_step", NO_HOOK)
        assert tree(out) == (as_tree(OLD) if step in BEFORE_SWAP else as_tree(NEW)), step
        assert sorted(p.name for p in root.iterdir()) == ["out"], step


def test_interrupt_between_mkdtemp_and_its_result_leaves_nothing(tmp_path, monkeypatch):
    """The window before `tmp` is even known (mkdtemp created it, then Ctrl-C): the run still removes it."""
    out = tmp_path / "out"
    write_atomic(OLD, out)
    real = output.tempfile.mkdtemp

    def mkdtemp_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(output.tempfile, "mkdtemp", mkdtemp_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(NEW, out)
    assert tree(out) == as_tree(OLD) and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_concurrent_writers_take_turns_and_readers_never_see_a_partial_output(tmp_path, mode):
    """Two processes write the same --out 15 times each: every write succeeds, never two inside the lock at
    once, the final output is one writer's complete output, nothing is left beside it. With the atomic
    exchange, a third process reading --out all the while always finds it, and complete."""
    out = tmp_path / "out"
    inside, stop = tmp_path / "inside", tmp_path / "stop"
    names = {"a.txt", "b.txt", "sub", OUTPUT_MARKER}
    write_atomic({"a.txt": "0", "b.txt": "0", "sub/c.txt": "0"}, out)

    def writer(w: int):
        def run():
            def step(name):  # mutual exclusion, checked directly: O_EXCL fails if another writer is inside
                if name == "locked":
                    os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                elif name == "cleaned":
                    inside.unlink()
                elif name == "moved-old":  # the fallback's window without --out: wide, so a reader would see it
                    time.sleep(0.005)
            output._step = step
            for i in range(15):
                tag = f"{w}-{i}"
                write_atomic({"a.txt": tag, "b.txt": tag, "sub/c.txt": tag}, out)
        return run

    def reader():
        seen = 0
        while not stop.exists():
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)  # raises if --out is missing
            try:
                listing = set(os.listdir(fd))
                # incomplete is fine only for an old output that was swapped out (and is being deleted)
                assert listing == names or os.stat(out).st_ino != os.fstat(fd).st_ino, listing
            finally:
                os.close(fd)
            seen += 1
        assert seen > 10, seen

    pids = [fork_child(fn) for fn in [writer(1), writer(2)] + ([reader] if mode == "exchange" else [])]
    codes = [wait_child(pid) for pid in pids[:2]]
    stop.touch()
    codes += [wait_child(pid) for pid in pids[2:]]
    assert codes == [0] * len(pids)
    final = tree(out)
    assert final is not None and len({v for v in final.values()}) == 1 and set(final) == {"a.txt", "b.txt",
                                                                                            "sub/c.txt"}
    assert next(iter(final.values())) in (b"1-14", b"2-14")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stop"]


def test_a_held_lock_makes_the_next_run_wait_then_fail_clearly(tmp_path, monkeypatch):
    import fcntl

    out = tmp_path / "out"
    write_atomic(OLD, out)
    fd = os.open(tmp_path / ".out.qgen-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run writing --out
    monkeypatch.setattr(output, "LOCK_TIMEOUT", 0.3)
    try:
        start = time.monotonic()
        with pytest.raises(UserError, match="another qgen run is writing '.*out'.*choose another --out"):
            write_atomic(NEW, out)
        assert time.monotonic() - start >= 0.3
    finally:
        os.close(fd)
    assert tree(out) == as_tree(OLD)
    write_atomic(NEW, out)  # the lock died with its holder
    assert tree(out) == as_tree(NEW) and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_directories_of_other_outputs_are_left_alone(tmp_path):
    """Recovery removes only this --out's leftovers (`.out.tmp-XXXXXXXX`), not a sibling output's."""
    (tmp_path / ".out.tmp-abcd1234").mkdir()
    other = tmp_path / ".out.tmp-x.tmp-abcd1234"  # the temporary directory of an --out named 'out.tmp-x'
    other.mkdir()
    write_atomic(NEW, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "out"]


def ours(tmpdir: Path) -> list[str]:
    """Entries of a private TMPDIR, without torch's own cache (torchinductor_<user>, made by torch.export)."""
    return sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_"))


# ------------------------------------------------------------------------------------ the command line

FACTORY = textwrap.dedent("""
    import torch.nn as nn

    def make_model():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
""")

# runs `qgen` (codegen.cli.main) with a pause at one step of the write, announced on stdout
PAUSING_QGEN = textwrap.dedent("""
    import sys, time
    import codegen.output as output
    from codegen.cli import main

    def step(name):
        if name == sys.argv[1]:
            print("paused at " + name, flush=True)
            time.sleep(float(sys.argv[2]))

    output._step = step
    sys.exit(main(sys.argv[3:]))
""")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "models.py").write_text(FACTORY)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32))
    return tmp_path


def compile_args(work: Path, out: Path, prefix: str) -> list[str]:
    return ["compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8", "--calib",
            str(work / "calib.npy"), "--out", str(out), "--prefix", prefix]


def pausing_qgen(step: str, seconds: float, args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PAUSING_QGEN, step, str(seconds), *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for_line(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"qgen ended before '{text}': {proc.wait()} {proc.stderr.read()}")


def test_sigterm_during_compile_write_keeps_old_output_and_leaves_nothing(work):
    from codegen.cli import main

    out = work / "model"
    assert main(compile_args(work, out, "first")) == 0
    before = tree(out)
    proc = pausing_qgen("written", 60, compile_args(work, out, "second"))
    wait_for_line(proc, "paused at written")  # the new output is complete in its temporary directory
    assert any(".model.tmp-" in p.name for p in work.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err, err
    assert tree(out) == before
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


def test_two_concurrent_compiles_into_one_out_both_succeed(work):
    out = work / "model"
    procs = [pausing_qgen("locked", 1.0, compile_args(work, out, prefix)) for prefix in ("first", "second")]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    assert [code for code, _ in results] == [0, 0], results
    files = {p.name for p in out.iterdir()}
    prefixes = {name.split("_")[0] for name in files if name.endswith("_model.h")}
    assert len(prefixes) == 1, files  # one complete output, not a mix
    prefix = prefixes.pop()
    assert {f"{prefix}_model.c", f"{prefix}_weights.c", OUTPUT_MARKER} <= files
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


def test_sigterm_during_firmware_leaves_no_temporary_directory(work, tmp_path_factory):
    """`qgen firmware` builds in a temporary directory: SIGTERM in the middle of the cross-build removes it
    (exit 143), as Ctrl-C does."""
    import shutil

    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    from codegen.cli import main

    assert main(compile_args(work, work / "model", "fw")) == 0  # so that the subprocess only builds
    private_tmp = tmp_path_factory.mktemp("private-tmp")
    env = {**os.environ, "TMPDIR": str(private_tmp), "QGEN_CACHE": str(work / "cache")}  # nothing cached
    args = ["firmware", str(work / "model"), "--board", "stm32f446", "--out", str(work / "fw")]
    proc = subprocess.Popen([sys.executable, "-m", "codegen.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(private_tmp.glob("qgen-*/build/obj")) and proc.poll() is None:  # cross-building
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "qgen firmware finished before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert ours(private_tmp) == []
    assert not (work / "fw").exists()


# ------------------------------------------------------------------------- CompileResult.verify()

def test_verify_of_an_in_memory_result_leaves_no_temporary_directory(tmp_path, monkeypatch):
    import tempfile

    import torch

    import codegen
    import codegen.api

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU())
    calib = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    for _ in range(2):
        result = codegen.compile(model, torch.zeros(1, 6), calib, prefix="leak")
        assert result.verify().exact
        assert ours(private_tmp) == []

    def broken_host(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(codegen.api, "HostModel", broken_host)
    with pytest.raises(KeyboardInterrupt):
        codegen.compile(model, torch.zeros(1, 6), calib, prefix="leak").verify()
    assert ours(private_tmp) == []
