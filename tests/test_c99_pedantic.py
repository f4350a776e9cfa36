"""Generated C and the kernel library are strict ISO C99: `-std=c99 -pedantic -Werror` on the host and with
arm-none-eabi-gcc (newlib) for Cortex-M0+, M4 (hard float) and M55. glibc hides C11-only constructs on the host
(its <sys/cdefs.h> defines a fallback `_Static_assert`), so the cross compilers are the real check."""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from models import make_residual

from codegen import compile as qcompile
from codegen.bundle import bundle

STRICT = ["-std=c99", "-pedantic", "-Werror", "-Wall", "-Wextra", "-Wconversion", "-O0", "-c", "-o", "/dev/null"]
COMPILERS = {
    "host": ["gcc"],
    "cortex-m0plus": ["arm-none-eabi-gcc", "-mcpu=cortex-m0plus", "-mthumb"],
    "cortex-m4": ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
    "cortex-m55": ["arm-none-eabi-gcc", "-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard", "-mfpu=auto"],
}


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
def test_generated_c_and_kernels_are_pedantic_c99(tmp_path):
    model, x = make_residual()
    # int16 layer (qg_wide.c paths) + a bundle (its shared-arena checks), both with compile-time asserts
    net = qcompile(model, x, prefix="net", out_dir=tmp_path / "net", precision={"c1": 16})
    aux = qcompile(model, x, prefix="aux")
    bundle([net, aux], tmp_path / "fw", name="fw")
    sources = [(tmp_path / "net", p, []) for p in sorted((tmp_path / "net").rglob("*.c"))]
    sources.append((tmp_path / "net", tmp_path / "net" / "net_model.c", ["-DNET_ENABLE_TRACE"]))
    sources += [(tmp_path / "fw", p, []) for p in sorted((tmp_path / "fw").glob("*.c"))]
    headers = sorted((tmp_path / "net" / "kernels").glob("*.h"))
    for h in headers:  # each header on its own: self-contained, no empty translation unit
        src = tmp_path / f"inc_{h.stem}.c"
        src.write_text(f'#include "{h.name}"\nint qg_include_check_{h.stem}(void);\n')
        sources.append((tmp_path / "net", src, []))
    assert any("QG_STATIC_ASSERT" in p.read_text() for _, p, _ in sources)  # the checks are there to test

    def build(job):
        (core, cc), (root, src, defines) = job
        cmd = [*cc, *STRICT, *defines, f"-I{root}", f"-I{root / 'kernels'}", str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return f"[{core}] {src.name}: {r.stderr.strip()}" if r.returncode else None

    jobs = [(c, s) for c in COMPILERS.items() for s in sources]
    with ThreadPoolExecutor(2) as pool:
        failures = [f for f in pool.map(build, jobs) if f]
    assert not failures, "\n".join(failures)


def test_a_failed_compile_time_check_stops_the_build(tmp_path):
    """QG_STATIC_ASSERT really fails: a weights array whose size disagrees does not compile."""
    model, x = make_residual()
    r = qcompile(model, x, prefix="net", out_dir=tmp_path / "net")
    weights = tmp_path / "net" / "net_weights.c"
    text = weights.read_text()
    assert "QG_STATIC_ASSERT(sizeof(" in text
    weights.write_text(text.replace("QG_STATIC_ASSERT(sizeof(", "QG_STATIC_ASSERT(1 + sizeof(", 1))
    proc = subprocess.run(["gcc", *STRICT, f"-I{r.out_dir}", f"-I{r.out_dir / 'kernels'}", str(weights)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "qg_static_assert_" in proc.stderr
