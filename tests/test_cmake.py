"""`qgen compile --cmake`: a consumer CMake project links two models (two prefixes, one shared qgen_kernels) and
builds with CMake + Ninja for the host and, through the generated arm-none-eabi toolchain file, for Cortex-M0+,
M4, M7 and M55; every build's outputs equal the integer reference (host: run; Cortex-M: under QEMU, semihosting).

Builds are the slow part: one configure + build per core, the two models compiled once for the module, the
builds two at a time (the machine has two cores; ninja runs the compiles of one build in parallel too).
"""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from models import MLP, GlobalPoolNet

from codegen import compile as qcompile
from codegen.cmake import TOOLCHAIN_FILE, core_flags, write_with_cmake
from codegen.target import load_board, qemu_command
from codegen.target.toolchain import _startup_dir, linker_script_text

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None,
                                reason="needs cmake and ninja (Debian packages cmake, ninja-build)")
HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("qemu-system-arm") is not None
# core -> the board whose QEMU machine runs it (M0+: ARMv6-M code on the M3 machine, as in test_firmware.py)
CORES = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500", "cortex-m55": "mps3-an547"}
WARNINGS = "-std=c99 -Wall -Wextra -Werror -Wconversion"  # the consumer holds the generated C to qgen's standard

CONSUMER_CMAKE = """\
cmake_minimum_required(VERSION 3.13)
project(qgen_consumer C)
separate_arguments(warnings UNIX_COMMAND "${CONSUMER_WARNINGS}")
add_compile_options(${warnings})  # for the models and qgen_kernels too (not CMAKE_C_FLAGS: the toolchain's core)
add_subdirectory("${GPOOL_DIR}" gpool)
add_subdirectory("${MLP_DIR}" mlp)
add_executable(consumer main.c)
target_include_directories(consumer PRIVATE "${CMAKE_CURRENT_BINARY_DIR}")
target_link_libraries(consumer PRIVATE gpool mlp)
if(CMAKE_CROSSCOMPILING)  # qgen's bare-metal start-up code and semihosting (firmware/startup), its linker script
    target_sources(consumer PRIVATE "${QG_STARTUP}/qg_startup.c" "${QG_STARTUP}/qg_semihost.c")
    target_include_directories(consumer PRIVATE "${QG_STARTUP}")
    target_compile_definitions(consumer PRIVATE CONSUMER_SEMIHOST=1)
    target_link_options(consumer PRIVATE "-T${LINK_SCRIPT}" -nostartfiles --specs=nano.specs -Wl,--gc-sections)
endif()
"""

CONSUMER_MAIN = r"""
#include <stddef.h>
#include <stdint.h>

#include "gpool_model.h"
#include "mlp_model.h"
#include "inputs.h"

#ifdef CONSUMER_SEMIHOST
#include "qg_semihost.h"
static void say(const char *text) { qg_semihost_puts(text); }
#else
#include <stdio.h>
static void say(const char *text) { fputs(text, stdout); }
#endif

/* One line per inference: "<name> <status> <hex bytes of the output>". */
static void print_output(const char *name, int status, const int8_t *out, size_t n)
{
    char line[8 + 3 * 64];
    size_t k = 0;
    say(name);
    line[k++] = ' ';
    line[k++] = status == 0 ? '0' : '1';
    for (size_t i = 0; i < n && i < 64; ++i) {
        const unsigned v = (unsigned)(uint8_t)out[i];
        line[k++] = ' ';
        line[k++] = "0123456789abcdef"[v >> 4];
        line[k++] = "0123456789abcdef"[v & 0xFu];
    }
    line[k++] = '\n';
    line[k] = '\0';
    say(line);
}

static int8_t gpool_out[GPOOL_OUTPUT_SIZE] __attribute__((aligned(8)));
static int8_t mlp_out[MLP_OUTPUT_SIZE] __attribute__((aligned(8)));

int main(void)
{
    for (size_t i = 0; i < N_SAMPLES; ++i) {  /* the two models take turns: both live in one program */
        print_output("gpool", gpool_run(gpool_in[i], gpool_out), gpool_out, GPOOL_OUTPUT_SIZE);
        print_output("mlp", mlp_run(mlp_in[i], mlp_out), mlp_out, MLP_OUTPUT_SIZE);
    }
    return 0;
}
"""


def _c_array(name: str, x: np.ndarray) -> str:
    rows = ",\n".join("    {" + ", ".join(str(int(v)) for v in row) + "}" for row in x.reshape(len(x), -1))
    return f"static const int8_t {name}[N_SAMPLES][{x[0].size}] __attribute__((aligned(8))) = {{\n{rows}\n}};\n"


@pytest.fixture(scope="module")
def consumer(tmp_path_factory):
    """Two models with their CMake packages, a consumer project, its inputs and the expected output lines."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("cmake")
    dirs, expected, inputs = {}, {}, {}
    for name, model, shape in (("gpool", GlobalPoolNet().eval(), (2, 9, 9)), ("mlp", MLP().eval(), (20,))):
        calib = rng.standard_normal((16, *shape)).astype(np.float32)
        r = qcompile(model, torch.from_numpy(calib[:1]), calib, prefix=name)
        write_with_cmake(r, base / name)
        x = r.quantize_input(calib[:3] * 4)
        x = np.concatenate([x, np.full_like(x[:1], -128), np.full_like(x[:1], 127)])  # saturating extremes
        inputs[name], expected[name], dirs[name] = x, r.reference(x), base / name
    project = base / "consumer"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(CONSUMER_CMAKE)
    (project / "main.c").write_text(CONSUMER_MAIN)
    (project / "inputs.h").write_text(f"#define N_SAMPLES {len(inputs['mlp'])}\n"
                                      + "".join(_c_array(f"{n}_in", x) for n, x in inputs.items()))
    lines = [f"{n} 0 {' '.join(f'{int(v) & 0xFF:02x}' for v in expected[n][i])}"
             for i in range(len(inputs["mlp"])) for n in ("gpool", "mlp")]
    return {"project": project, "dirs": dirs, "lines": lines, "base": base}


def _build(consumer: dict, core: str | None) -> Path:
    """Configure (Ninja) and build the consumer for the host (core None) or a Cortex-M core; the executable."""
    build = consumer["base"] / f"build-{core or 'host'}"
    cmd = ["cmake", "-G", "Ninja", "-S", str(consumer["project"]), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
           f"-DGPOOL_DIR={consumer['dirs']['gpool']}", f"-DMLP_DIR={consumer['dirs']['mlp']}",
           f"-DCONSUMER_WARNINGS={WARNINGS}"]
    if core is not None:
        link = consumer["base"] / f"link-{core}.ld"
        link.write_text(linker_script_text(load_board(CORES[core])))
        cmd += [f"-DCMAKE_TOOLCHAIN_FILE={consumer['dirs']['gpool'] / TOOLCHAIN_FILE}", f"-DQGEN_CPU={core}",
                f"-DQG_STARTUP={_startup_dir()}", f"-DLINK_SCRIPT={link}"]
    for step in (cmd, ["cmake", "--build", str(build)]):
        proc = subprocess.run(step, capture_output=True, text=True)
        assert proc.returncode == 0, f"$ {' '.join(step)}\n{proc.stdout}\n{proc.stderr}"
    return build / "consumer"


@pytest.fixture(scope="module")
def builds(consumer):
    """{core or 'host': executable}: every build of the consumer, two at a time."""
    cores = [None, *CORES] if HAVE_ARM else [None]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([c or "host" for c in cores], pool.map(lambda c: _build(consumer, c), cores)))


def test_host_consumer_links_two_models_bit_exact(consumer, builds):
    run = subprocess.run([str(builds["host"])], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == consumer["lines"]


def test_one_kernel_library_shared_by_both_models(consumer, builds):
    """Both models call qg_fully_connected_s8.c and qg_eltwise_s8.c: qgen_kernels compiles each once (a second copy
    would be a duplicate symbol at link), and holds gpool's conv and pool kernels too."""
    ninja = (consumer["base"] / "build-host" / "build.ninja").read_text()
    for kernel in ("qg_fully_connected_s8.c", "qg_eltwise_s8.c", "qg_conv2d_s8.c", "qg_pool2d_s8.c"):
        assert ninja.count(f"/{kernel}.o:") == 1, kernel
    assert (consumer["dirs"]["mlp"] / "kernels" / "qg_fully_connected_s8.c").is_file()


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
@pytest.mark.parametrize("core", list(CORES))
def test_cortex_m_consumer_bit_exact_under_qemu(consumer, builds, core):
    elf = builds[core]
    flags = dict(core_flags())[core]
    listing = subprocess.run(["arm-none-eabi-readelf", "-A", str(elf)], capture_output=True, text=True).stdout
    assert {"cortex-m0plus": "v6S-M", "cortex-m4": "v7E-M", "cortex-m7": "v7E-M", "cortex-m55": "v8.1-M.main"}[core] \
        in listing, listing  # the toolchain file's -mcpu reached the objects
    assert f"-mcpu={core}" in flags
    run = subprocess.run(qemu_command(load_board(CORES[core]), elf), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr.splitlines() == consumer["lines"]  # QEMU prints semihosting console text on stderr


def test_different_kernel_versions_refused_at_configure(consumer, tmp_path):
    """A second model whose kernel file differs (another qgen version) stops the configure with a message instead
    of linking two versions of qgen_kernels."""
    other = tmp_path / "mlp"
    shutil.copytree(consumer["dirs"]["mlp"], other)
    fc = other / "kernels" / "qg_fully_connected_s8.c"
    fc.write_text(fc.read_text() + "\n/* another version */\n")
    proc = subprocess.run(["cmake", "-G", "Ninja", "-S", str(consumer["project"]), "-B", str(tmp_path / "b"),
                           f"-DGPOOL_DIR={consumer['dirs']['gpool']}", f"-DMLP_DIR={other}"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "kernels/qg_fully_connected_s8.c differs from" in proc.stderr and "same qgen" in proc.stderr


def test_cli_compile_cmake(tmp_path, monkeypatch):
    """`qgen compile --cmake` writes the package with the model (one atomic output); it configures on its own."""
    from codegen.cli import main

    out = tmp_path / "m"
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["compile", "tests/models.py:MLP", "--input-shape", "1,20", "--prefix", "kws", "--out", str(out),
                 "--cmake"]) == 0
    text = (out / "CMakeLists.txt").read_text()
    assert "add_library(kws STATIC" in text and "if(NOT TARGET qgen_kernels)" in text
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("-mcpu" in line for line in code)  # the core is the toolchain's
    assert (out / TOOLCHAIN_FILE).is_file() and (out / "kernels" / "qg_kernels.h").is_file()
    assert (out / "kws_model.c").is_file() and (out / "report.json").is_file()
    build = subprocess.run(["cmake", "-G", "Ninja", "-S", str(out), "-B", str(tmp_path / "b")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr


def test_cli_cmake_with_split_at_is_a_user_error(tmp_path, capsys):
    from codegen.cli import main

    assert main(["compile", "tests/models.py:MLP", "--input-shape", "1,20", "--out", str(tmp_path / "m"), "--cmake",
                 "--split-at", "net.0"]) == 1
    assert "--cmake packages one model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
