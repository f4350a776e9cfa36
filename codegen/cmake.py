"""A CMake package beside the generated model: `qgen compile ... --cmake`.

`cmake_files(prefix, files, banner)` adds to a model's generated files (as codegen.emit.c.render returns them:
`<prefix>_*.c/.h` and `kernels/`, which already holds only the kernel sources the model calls) two files:

  CMakeLists.txt            target `<prefix>` (static library: the model's .c files, PUBLIC include dir: the
                            model folder) linked to ONE `qgen_kernels` static library, defined by the first qgen
                            model a build adds (`if(NOT TARGET qgen_kernels)`); every model adds to it the kernel
                            sources it needs that are not in it yet (a global property per file name), so several
                            models in one firmware link each kernel once. Two models from different qgen versions
                            (a kernel file with the same name and other bytes) stop the configure with a message.
  cmake/arm-none-eabi.cmake a toolchain file: QGEN_CPU (cache variable) -> that core's -mcpu/-mfpu/-mfloat-abi,
                            from boards/*.toml (boards are data: one table, no copy here).

The libraries never force a core: it is the toolchain's (-mcpu in CMAKE_C_FLAGS), and the kernels choose their
DSP / Helium paths from the compiler's __ARM_FEATURE_* macros, exactly as in `qgen firmware`. QGEN_KERNEL_FLAGS
(cache variable) holds the extra options (default -O2 -ffunction-sections -fdata-sections with GCC/Clang).
"""
from __future__ import annotations

from pathlib import Path

from .emit.c import template_environment
from .errors import UserError

CMAKE_LISTS = "CMakeLists.txt"
TOOLCHAIN_FILE = "cmake/arm-none-eabi.cmake"
DEFAULT_CPU = "cortex-m4"


def core_flags() -> list[tuple[str, list[str]]]:
    """[(core, compiler flags)] of every core of boards/*.toml, sorted; boards of one core must agree."""
    from .target import list_boards, load_board

    flags: dict[str, list[str]] = {}
    for name in list_boards():
        board = load_board(name)
        known = flags.setdefault(board.core, list(board.cflags))
        if known != list(board.cflags):  # a board data error, not the user's
            raise RuntimeError(f"boards of core {board.core} disagree on its flags: {known} vs {board.cflags} "
                               f"({name}); the CMake toolchain file has one set per core")
    return sorted(flags.items())


def cmake_files(prefix: str, files: dict[str, str | bytes], banner: list[str]) -> dict[str, str]:
    """{CMakeLists.txt, cmake/arm-none-eabi.cmake: text} for the model files `files` ({relative path: content}).
    Deterministic."""
    model_sources = sorted(p for p in files if "/" not in p and p.endswith(".c"))
    kernel_names = sorted(p.split("/", 1)[1] for p in files if p.startswith("kernels/") and p.count("/") == 1)
    if not model_sources or "kernels/qg_kernels.h" not in files:
        raise UserError(f"model '{prefix}': no generated C sources and kernels/ to package for CMake")
    cores = core_flags()
    env = template_environment()
    lists = env.get_template("cmake/CMakeLists.txt.j2").render(m={
        "banner": banner, "prefix": prefix, "model_sources": model_sources,
        "kernel_sources": [k for k in kernel_names if k.endswith(".c")],
        "kernel_headers": [k for k in kernel_names if k.endswith(".h")]})
    toolchain = env.get_template("cmake/arm-none-eabi.cmake.j2").render(m={
        "banner": banner[:1], "cpus": [c for c, _ in cores], "cpu_flags": cores,
        "default_cpu": DEFAULT_CPU if DEFAULT_CPU in dict(cores) else cores[0][0]})
    return {CMAKE_LISTS: lists, TOOLCHAIN_FILE: toolchain}


def write_with_cmake(result, out_dir: str | Path) -> None:
    """Write a CompileResult's files and the CMake package into `out_dir`, in one atomic write (the CLI's
    `qgen compile --cmake`: the result was compiled with out_dir=None)."""
    from .output import banner_lines, option_text, write_atomic

    files = {**result.files, **cmake_files(result.prefix, result.files,
                                           banner_lines(result.graph.source, option_text(prefix=result.prefix)))}
    write_atomic(files, Path(out_dir))
    result.files, result.out_dir = files, Path(out_dir)

