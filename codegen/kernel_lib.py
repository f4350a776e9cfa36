"""The kernel library compiled once into a cached static archive, shared by every build that links it.

Host cffi builds (hostcheck.HostModel), native/sanitizer builds (hostcheck.build_native), firmware builds
(target.build_elf) and the fuzzer all link the same kernels/*.c; compiling them for every model was most
of every build. `archive(kernel_dir, compile_cmd)` compiles the .c files of one kernels/ directory with one
compile command into `<cache>/kernels/<digest>/libqg_kernels.a`, where the digest covers every .c and .h
of that directory (name and bytes), the command (compiler, flags, core), the compiler's version and the
archiver. The sources hashed are the model directory's own kernels/, not the package's, so a test that
edits a model's kernels gets its own archive. Parallel processes build in private temporary directories
and publish by an atomic rename; the loser of a race uses the winner's archive.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ARCHIVE_NAME = "libqg_kernels.a"
KERNEL_HEADER = "qg_kernels.h"  # marks a directory as a kernel library


@dataclass(frozen=True)
class KernelArchive:
    path: Path
    warnings: str  # the compiler's diagnostics when the archive was built (kept with it)


def is_kernel_dir(directory: Path) -> bool:
    return (Path(directory) / KERNEL_HEADER).is_file()


@cache
def _compiler_version(cc: str) -> str:
    try:
        proc = subprocess.run([cc, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True, check=False)
        return proc.stdout.strip() + "|" + (shutil.which(cc) or cc)
    except OSError:
        return cc


def _default_run(command: list[str], what: str) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{' '.join(command)}\n{proc.stderr}")
    return proc.stderr


def digest(kernel_dir: Path, compile_cmd: Sequence[str], ar: str = "ar") -> str:
    h = hashlib.sha256()
    for path in sorted(Path(kernel_dir).glob("*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update("\0".join(compile_cmd).encode() + b"\0" + ar.encode() + b"\0" + _compiler_version(compile_cmd[0]).encode())
    return h.hexdigest()[:24]


def archive(kernel_dir: Path | str, compile_cmd: Sequence[str], *, ar: str = "ar",
            run: Callable[[list[str], str], str] = _default_run, cache_dir: Path | None = None) -> KernelArchive:
    """The static archive of `kernel_dir`'s .c files compiled with `compile_cmd` (compiler + flags, no -c/-o;
    `-I kernel_dir` is added), built on first use. `run(command, what)` runs a tool and returns its
    diagnostics or raises (target.py passes its own, which raises TargetError)."""
    from .hostcheck import cache_root

    kernel_dir = Path(kernel_dir).resolve()
    cmd = [*compile_cmd, f"-I{kernel_dir}"]
    key = digest(kernel_dir, list(compile_cmd), ar)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "kernels"
    final = root / key
    if (final / ARCHIVE_NAME).is_file():
        return KernelArchive(final / ARCHIVE_NAME, (final / "warnings.txt").read_text())
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{key[:8]}-", dir=root))
    try:
        sources = sorted(kernel_dir.glob("*.c"))
        objects = [tmp / f"{i:03d}_{src.stem}.o" for i, src in enumerate(sources)]

        def compile_one(i: int) -> str:
            return run([*cmd, "-c", str(sources[i]), "-o", str(objects[i])], f"compiling {sources[i]}")

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            warnings = "".join(pool.map(compile_one, range(len(sources))))
        run([ar, "rcs", str(tmp / ARCHIVE_NAME), *map(str, objects)], "archiving the kernel library")
        for obj in objects:
            obj.unlink()
        (tmp / "warnings.txt").write_text(warnings)
        try:
            os.rename(tmp, final)
        except OSError:  # another process published the same archive first: use it
            if not (final / ARCHIVE_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return KernelArchive(final / ARCHIVE_NAME, (final / "warnings.txt").read_text())


def split_sources(sources: Sequence[Path | str]) -> tuple[list[Path], list[Path]]:
    """(other sources, kernel directories): the sources that make up a whole kernel library directory
    (every .c of a directory holding qg_kernels.h) are replaced by that directory; the rest stay."""
    paths = [Path(s) for s in sources]
    by_dir: dict[Path, set[Path]] = {}
    for p in paths:
        by_dir.setdefault(p.resolve().parent, set()).add(p.resolve())
    kernel_dirs = [d for d, files in by_dir.items()
                   if is_kernel_dir(d) and files == {c.resolve() for c in d.glob("*.c")}]
    rest = [p for p in paths if p.resolve().parent not in kernel_dirs]
    return rest, kernel_dirs
