"""Progress on long work (compile passes, fine-tuning / QAT epochs, auto-precision steps, verification, QEMU).

Library code reports; it never decides whether anything is shown:

    with progress.task("fine-tune", total=epochs) as p:
        for epoch in range(epochs):
            ...
            p.advance()
            p.note(f"epoch {epoch + 1}/{epochs} loss {loss:.4f}")

Modes (one per process, set by whoever owns the terminal):
- "off" (the default): a library user, a test, a pipe sees nothing; `task` returns a shared no-op object, so a
  report costs one attribute lookup and a call.
- "rich": live bars on stderr (one row per open task, nested tasks indented and removed when done; notes,
  e.g. one line per epoch with its loss, stay printed above the bars).
- "plain": no bars, no escape codes: one line per note and per finished top-level task (CI logs, `TERM=dumb`).

`qgen` picks the mode with `cli_mode`: `--quiet` -> off; else $QGEN_PROGRESS (off | plain | rich) if set; else
rich when stderr is a terminal, off when it is piped. A script turns it on with `progress.configure("rich")` or,
for a block, `with progress.enabled("plain"): ...`. Progress goes to stderr only; stdout is never touched (rich's
stdout redirection is off), and the callers' return values and exceptions are unchanged.

Report per step that costs milliseconds or more (a pass, an epoch, a batch, a sample run through C), never per
element in a hot loop.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from typing import IO, Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

MODES = ("off", "plain", "rich")

_mode = "off"
_stream: IO[str] | None = None  # None: sys.stderr at the time of use
_open: list[_Task] = []  # the open tasks, outermost first
_live = None  # the rich.progress.Progress while a task is open in rich mode


def configure(mode: str = "rich", stream: IO[str] | None = None) -> None:
    """Show progress from now on: mode "rich", "plain" or "off", on `stream` (default: sys.stderr)."""
    global _mode, _stream
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: give one of {', '.join(MODES)}")
    _mode, _stream = mode, stream


@contextlib.contextmanager
def enabled(mode: str = "rich", stream: IO[str] | None = None) -> Iterator[None]:
    """configure(mode, stream) for the block, then the previous mode again."""
    previous = (_mode, _stream)
    configure(mode, stream)
    try:
        yield
    finally:
        configure(*previous)


def mode() -> str:
    return _mode


def cli_mode(quiet: bool = False, stream: IO[str] | None = None) -> str:
    """The mode the command line uses: --quiet -> off; $QGEN_PROGRESS; rich on a terminal; off when piped."""
    if quiet:
        return "off"
    env = os.environ.get("QGEN_PROGRESS", "").strip().lower()
    if env in MODES:
        return env
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return "off"
    return "plain" if os.environ.get("TERM") == "dumb" else "rich"


class _Off:
    """The task of mode "off": every report is a no-op."""
    on = False

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def advance(self, n: float = 1) -> None:
        pass

    def update(self, description: str | None = None, *, info: str | None = None, total: float | None = None) -> None:
        pass

    def note(self, text: str) -> None:
        pass


_OFF = _Off()


class _Task:
    on = True

    def __init__(self, description: str, total: float | None):
        self.description, self.total, self.info = description, total, ""
        self.depth, self.start, self._id = 0, 0.0, None

    def _label(self) -> str:
        return "  " * self.depth + self.description

    def __enter__(self) -> _Task:
        global _live
        self.depth, self.start = len(_open), time.perf_counter()
        _open.append(self)
        if _mode == "rich":
            if _live is None:
                _live = _make_live()
                _live.start()
            self._id = _live.add_task(self._label(), total=self.total, info="", counted=self.total is not None)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _live
        _open.remove(self)
        seconds = time.perf_counter() - self.start
        if _live is not None and self._id is not None:
            if exc_type is None:  # a full bar (a spinner's too: its count column stays empty)
                _live.update(self._id, total=self.total or 1, completed=self.total or 1)
            if self.depth > 0 or exc_type is not None:
                _live.remove_task(self._id)
            else:
                _live.update(self._id, info="done")
            if not _open:
                live, _live = _live, None
                live.stop()
        elif _mode == "plain" and self.depth == 0 and exc_type is None:
            _write(f"{self._label()}: done in {seconds:.1f} s")
        return None

    def advance(self, n: float = 1) -> None:
        if _live is not None and self._id is not None:
            _live.advance(self._id, n)

    def update(self, description: str | None = None, *, info: str | None = None, total: float | None = None) -> None:
        """Change what the row says (e.g. the pass running now), its info text, or its total."""
        if description is not None:
            self.description = description
        if info is not None:
            self.info = info
        if total is not None:
            self.total = total
        if _live is not None and self._id is not None:
            _live.update(self._id, description=self._label(), info=self.info,
                         **({"total": total} if total is not None else {}))

    def note(self, text: str) -> None:
        """A line worth keeping (an epoch's loss, a search step): printed above the bars / as a plain line."""
        self.info = text
        if _live is not None and self._id is not None:
            _live.update(self._id, info=text)
            _live.console.print(f"{self._label()}: {text}", highlight=False, markup=False)
        elif _mode == "plain":
            _write(f"{self._label()}: {text}")


def task(description: str, total: float | None = None) -> _Task | _Off:
    """A context manager for one piece of long work: `with task("quantise", total=n) as p: p.advance()`.
    total=None: a spinner (unknown length). Silent unless progress was enabled (configure / enabled)."""
    if _mode == "off":
        return _OFF
    return _Task(description, total)


def tracked(description: str, total: float | None = None) -> Callable[[F], F]:
    """Decorator: the call runs inside `task(description, total)` (reach it with `current()`)."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if _mode == "off":
                return fn(*args, **kwargs)
            with task(description, total):
                return fn(*args, **kwargs)
        return call  # type: ignore[return-value]
    return wrap


def current() -> _Task | _Off:
    """The innermost open task (a no-op object when there is none or progress is off): lets a function say
    which stage of its caller's task it is in, `progress.current().update(info="report")`."""
    return _open[-1] if _open and _mode != "off" else _OFF


def _out() -> IO[str]:
    return _stream if _stream is not None else sys.stderr


def _write(line: str) -> None:
    stream = _out()
    stream.write(line + "\n")
    stream.flush()


def _make_live():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    stream = _out()
    console = Console(file=stream, force_terminal=True, highlight=False)  # the mode was chosen for this stream
    # stdout is never redirected (it stays machine-readable); other writes to stderr print above the bars
    class Count(MofNCompleteColumn):  # "3/12"; nothing for a task of unknown length (total=None)
        def render(self, task):
            return super().render(task) if task.fields.get("counted") else Text("")

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24), Count(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console, refresh_per_second=5,
                    redirect_stdout=False, redirect_stderr=stream is sys.stderr)
