"""Compile generated C for the host with cffi, run it, and compare with the reference bit for bit.

On a mismatch, the sample is re-run with the per-layer trace hook and the first differing layer,
element index and both values are reported.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import progress
from .ir import Graph
from .kernel_lib import archive, split_sources
from .reference import run_int

VERIFY_CHUNK = 256  # samples per host.run call in verify (one progress step each)
HOST_CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]


def cache_root() -> Path:
    root = Path(os.environ.get("QGEN_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qgen"))
    root.mkdir(parents=True, exist_ok=True)
    return root


class HostModel:
    """The generated model compiled for the host (a cffi extension), callable on batches of its input
    type (int8, or int16 with `--precision input=int16`: `input_dtype`)."""

    def __init__(self, model_dir: Path, prefix: str, input_size: int, output_size: int, stream: bool = False):
        self.prefix, self.input_size, self.output_size = prefix, input_size, output_size
        self._mod = _build(Path(model_dir).resolve(), prefix, stream)  # cffi compiles in another directory
        self.ffi, self.lib = self._mod.ffi, self._mod.lib
        # a streaming model (--stream): run() calls <prefix>_step on each row in turn, reset() forgets the stream
        self._run = getattr(self.lib, f"{prefix}_step" if stream else f"{prefix}_run")
        if stream:
            self.reset = getattr(self.lib, f"{prefix}_reset")
        self._in_type = f"{prefix}_input_t[]"
        self.input_dtype = {1: np.int8, 2: np.int16}[self.ffi.sizeof(f"{prefix}_input_t")]

    def run(self, x_i8: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x_i8, dtype=self.input_dtype).reshape(-1, self.input_size))
        out = np.zeros((x.shape[0], self.output_size), dtype=np.int8)
        out_buf = self.ffi.from_buffer("int8_t[]", out)
        for i in range(x.shape[0]):
            status = self._run(self.ffi.from_buffer(self._in_type, x[i]), out_buf + i * self.output_size)
            if status != 0:
                raise RuntimeError(f"{self.prefix}_run returned {status}")
        return out

    def trace(self, x_i8: np.ndarray) -> list[np.ndarray]:
        """Run one sample with the trace hook; the output bytes of every layer in order."""
        layers: list[np.ndarray] = []

        @self.ffi.callback("void(int32_t, const int8_t *, int32_t)")
        def on_layer(index, data, size):
            layers.append(np.frombuffer(self.ffi.buffer(data, size), dtype=np.int8).copy())

        getattr(self.lib, f"{self.prefix}_set_trace")(on_layer)
        try:
            self.run(np.asarray(x_i8).reshape(1, -1))
        finally:
            getattr(self.lib, f"{self.prefix}_set_trace")(self.ffi.NULL)
        return layers

    def quantize_input(self, x_chw: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x_chw, dtype=np.float32).reshape(-1))
        out = np.zeros(self.input_size, dtype=self.input_dtype)
        getattr(self.lib, f"{self.prefix}_quantize_input")(self.ffi.from_buffer("float[]", x),
                                                            self.ffi.from_buffer(self._in_type, out))
        return out


def model_sources(model_dir: Path, prefix: str) -> list[Path]:
    """The C files of a generated model directory: model, weights, kernel library."""
    return [model_dir / f"{prefix}_model.c", model_dir / f"{prefix}_weights.c"] + sorted((model_dir / "kernels").glob("*.c"))


def host_compile_command() -> list[str]:
    """The compiler and flags setuptools uses for a cffi extension's C files (CC, CFLAGS, CCSHARED), so the
    kernel archive linked into it is compiled as its own sources would be."""
    import shlex
    import sysconfig

    cc, cflags, ccshared = (sysconfig.get_config_var(v) or "" for v in ("CC", "CFLAGS", "CCSHARED"))
    cc = os.environ.get("CC", cc)
    cflags = cflags + " " + os.environ.get("CFLAGS", "") + " " + os.environ.get("CPPFLAGS", "")
    return [*shlex.split(cc or "cc"), *shlex.split(cflags), *shlex.split(ccshared or "-fPIC")]


def _build(model_dir: Path, prefix: str, stream: bool = False):
    import cffi

    sources = model_sources(model_dir, prefix)
    headers = sorted(model_dir.glob("*.h")) + sorted((model_dir / "kernels").glob("*.h"))
    digest = hashlib.sha256()
    for path in sources + headers:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(HOST_CFLAGS).encode() + b"\0input_t" + (b"\0stream" if stream else b""))  # cdef version
    name = f"_qgen_host_{prefix}_{digest.hexdigest()[:16]}"
    build_dir = cache_root() / "host" / name
    built = sorted(build_dir.glob(f"{name}*.so")) + sorted(build_dir.glob(f"{name}*.pyd"))
    if not built:
        ffi = cffi.FFI()
        ffi.cdef(f"""
            typedef int... {prefix}_input_t;
            {f"int {prefix}_step(const {prefix}_input_t *in, int8_t *out); void {prefix}_reset(void);" if stream
             else f"int {prefix}_run(const {prefix}_input_t *in, int8_t *out);"}
            void {prefix}_quantize_input(const float *in, {prefix}_input_t *out);
            void {prefix}_dequantize_output(const int8_t *in, float *out);
            typedef void (*{prefix}_trace_fn)(int32_t layer, const int8_t *data, int32_t size);
            void {prefix}_set_trace({prefix}_trace_fn fn);
        """)
        with progress.task("build C for the host (cffi)"):
            own, kernel_dirs = split_sources(sources)  # the kernels: one cached archive (kernel_lib.py)
            kernels = [archive(d, [*host_compile_command(), *HOST_CFLAGS]).path for d in kernel_dirs]
            ffi.set_source(name, f'#include "{prefix}_model.h"', sources=[str(s) for s in own],
                           include_dirs=[str(model_dir), str(model_dir / "kernels")],
                           extra_objects=[str(k) for k in kernels],
                           define_macros=[(f"{prefix.upper()}_ENABLE_TRACE", "1")], extra_compile_args=HOST_CFLAGS)
            build_dir.mkdir(parents=True, exist_ok=True)
            tmp = build_dir / f"tmp-{os.getpid()}"
            try:
                lib_path = Path(ffi.compile(tmpdir=str(tmp), verbose=False))
                final = build_dir / lib_path.name
                os.replace(lib_path, final)
            finally:  # cffi's generated C and object files: only the library is kept
                shutil.rmtree(tmp, ignore_errors=True)
            built = [final]
    spec = importlib.util.spec_from_file_location(name, built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Mismatch:
    sample: int
    layer: int
    layer_name: str
    index: int
    c_value: int
    ref_value: int

    def __str__(self) -> str:
        return (f"sample {self.sample}: first difference in layer {self.layer} ({self.layer_name}) at element "
                f"{self.index}: C = {self.c_value}, reference = {self.ref_value}")


@dataclass
class VerifyResult:
    samples: int
    matching: int
    mismatch: Mismatch | None
    outputs: np.ndarray  # C outputs (N, OUTPUT_SIZE) int8

    @property
    def exact(self) -> bool:
        return self.matching == self.samples

    def __str__(self) -> str:
        head = f"bit-exact: {'yes' if self.exact else 'NO'} ({self.matching}/{self.samples} samples)"
        return head if self.mismatch is None else f"{head}\n{self.mismatch}"


def reference_outputs(g: Graph, values: dict[str, np.ndarray]) -> np.ndarray:
    n = values[g.inputs[0]].shape[0]
    return np.concatenate([values[o].reshape(n, -1) for o in g.outputs], axis=1).astype(np.int8)


def verify(g: Graph, host: HostModel, x_i8: np.ndarray) -> VerifyResult:
    """Run C and the reference on the same int8 inputs (N, *input_shape) and compare every byte."""
    n = int(x_i8.shape[0])
    with progress.task("verify C == reference", total=n) as bar:  # a step per sample run through the C
        bar.update(info="reference")
        values = run_int(g, x_i8)
        expect = reference_outputs(g, values)
        bar.update(info="C (host)")
        flat = x_i8.reshape(n, -1)
        parts = []
        for start in range(0, n, VERIFY_CHUNK) if n else [0]:
            parts.append(host.run(flat[start:start + VERIFY_CHUNK]))
            bar.advance(len(parts[-1]))
        got = np.concatenate(parts)
    equal = np.all(got == expect, axis=1)
    mismatch = None
    if not equal.all():
        sample = int(np.argmin(equal))
        mismatch = first_difference(g, host, x_i8[sample], {k: v[sample] for k, v in values.items()}, sample)
    return VerifyResult(int(x_i8.shape[0]), int(equal.sum()), mismatch, got)


def first_difference(g: Graph, host: HostModel, x_i8: np.ndarray, ref: dict[str, np.ndarray], sample: int) -> Mismatch:
    layers = host.trace(x_i8.reshape(1, -1))
    for index, node in enumerate(g.nodes):
        expect = ref[node.outputs[0]].reshape(-1).astype(np.int64)
        got = np.array([], dtype=np.int64)
        if index < len(layers):  # the trace gives each layer's output bytes
            raw = layers[index]
            got = (raw.view(np.int16) if g.tensors[node.outputs[0]].dtype == "int16" else raw).astype(np.int64)
        if got.shape != expect.shape or np.any(got != expect):
            if got.shape != expect.shape:
                return Mismatch(sample, index, node.where(), -1, -1, -1)
            i = int(np.argmax(got != expect))
            return Mismatch(sample, index, node.where(), i, int(got[i]), int(expect[i]))
    return Mismatch(sample, -1, "final output", -1, -1, -1)


STRICT_CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-Wsign-conversion", "-Wshadow"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1"]

HARNESS_C = r"""
/* qgen host harness: reads N input vectors from argv[1], writes N outputs to argv[2]. A streaming model
 * (--stream) is reset once and stepped with the N vectors as one stream's frames. */
#include <stdio.h>
#include <stdlib.h>
#include "%(prefix)s_model.h"
#ifdef %(PREFIX)s_STREAM
#define QG_HOST_RUN %(prefix)s_step
#else
#define QG_HOST_RUN %(prefix)s_run
#endif

int main(int argc, char **argv)
{
    static %(prefix)s_input_t in[%(PREFIX)s_INPUT_SIZE];
    static int8_t out[%(PREFIX)s_OUTPUT_SIZE];
    FILE *fi, *fo;
    if (argc != 3) { return 2; }
    fi = fopen(argv[1], "rb");
    fo = fopen(argv[2], "wb");
    if (fi == NULL || fo == NULL) { return 3; }
#ifdef %(PREFIX)s_STREAM
    %(prefix)s_reset();
#endif
    while (fread(in, 1, sizeof in, fi) == sizeof in) {
        if (QG_HOST_RUN(in, out) != 0) { return 4; }
        if (fwrite(out, 1, sizeof out, fo) != sizeof out) { return 5; }
    }
    fclose(fi);
    fclose(fo);
    return 0;
}
"""


def build_native(model_dir: Path, prefix: str, out: Path, extra_flags: list[str] | None = None,
                 cc: str = "gcc") -> Path:
    """Build the generated model + a file-driven harness as a native executable (strict flags)."""
    import subprocess

    model_dir, out = Path(model_dir), Path(out)
    harness = out.with_suffix(".harness.c")
    harness.write_text(HARNESS_C % {"prefix": prefix, "PREFIX": prefix.upper()})
    flags = [*STRICT_CFLAGS, *(extra_flags or [])]
    own, kernel_dirs = split_sources(model_sources(model_dir, prefix))  # kernels: one cached archive each
    kernels = [archive(d, [cc, *(f for f in flags if f.startswith("-"))]).path for d in kernel_dirs]
    cmd = [cc, *flags, "-I", str(model_dir), "-I", str(model_dir / "kernels"),
           str(harness), *map(str, own), *map(str, kernels), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"native build failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return out


def run_native(exe: Path, x_i8: np.ndarray, output_size: int) -> np.ndarray:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        x = np.asarray(x_i8)
        np.ascontiguousarray(x, dtype=np.int16 if x.dtype == np.int16 else np.int8).tofile(fin)  # the input type
        proc = subprocess.run([str(exe), str(fin), str(fout)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{exe.name} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return np.fromfile(fout, dtype=np.int8).reshape(-1, output_size)
