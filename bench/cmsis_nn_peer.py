"""CMSIS-NN as a side-by-side peer for bench/kernels.py: the same layer shapes, measured in the same run.

CMSIS-NN is never vendored or committed: the bench finds a source checkout through `--cmsis-nn DIR`
or the environment variable QGEN_CMSIS_NN, and without one its columns read "-". Get it with

    git clone https://github.com/ARM-software/CMSIS-NN && git -C CMSIS-NN checkout 99f736a6

For each layer this module writes a small C "model" that calls CMSIS-NN's public API the way
TensorFlow Lite Micro's CMSIS-NN kernels do: arm_fully_connected_s8 with per-tensor quantisation,
arm_convolve_wrapper_s8 and arm_depthwise_conv_wrapper_s8 with per-channel quantisation, and
arm_max_pool_s8 / arm_avgpool_s8, each with a scratch buffer of the size its *_get_buffer_size()
function asks for. Like TFLM's Prepare, a one-time set-up on the first call sizes the scratch and, on
Helium (MVE) cores where arm_fully_connected_s8_get_buffer_size() is nonzero, fills the kernel sums
with arm_vector_sum_s8. The model is built by codegen.target.build_elf() (the same harness, start-up
code and count markers as qgen's own models) with CMSIS-NN's sources at `-O3`, run under QEMU with
qgen's counting plugin, and its outputs are checked against `reference()`, a NumPy computation of the
same TFLite-style integer arithmetic (input/output offsets, Q31 multiplier + shift with CMSIS-NN's
rounding, activation clamp), so the harness is known to compute the layer. The one-time set-up is
left out of the count by differencing: run 1 call and 1 + EXTRA_CALLS calls, and divide the
difference of the counted instructions by EXTRA_CALLS. What remains is what bench/kernels.py counts
for qgen: the call of the run function, the library call, and the return.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codegen.target import build_elf, run_qemu

COMMIT = "99f736a63036613032f9b70de36b493bcd7802d4"
ENV_VAR = "QGEN_CMSIS_NN"
HOW_TO_GET = (f"CMSIS-NN columns need a CMSIS-NN source checkout: `git clone https://github.com/ARM-software/"
              f"CMSIS-NN && git -C CMSIS-NN checkout {COMMIT[:8]}`, then pass `--cmsis-nn CMSIS-NN` "
              f"(or set {ENV_VAR}=CMSIS-NN)")
OPT = "-O3"  # CMSIS-NN's unit tests build with -O3; its CMake default -Ofast adds only float options
PREFIX = "cm"
EXTRA_CALLS = 2
SCRATCH_BYTES = 8192
INPUT_OFFSET = 128   # input zero point -128, as after a ReLU in TFLite int8 models
OUTPUT_OFFSET = 0


@dataclass(frozen=True)
class PeerLayer:
    """One layer in CMSIS-NN's terms. Weights as qgen holds them: linear (out, in), conv (out, kh, kw, in),
    depthwise (channels, kh, kw, 1); activations HWC. Padding (top, bottom, left, right), symmetric."""

    kind: str                       # fc | conv | dw | maxpool | avgpool
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    w: np.ndarray | None = None
    b: np.ndarray | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    bits: int = 8                   # 4: weights in [-8, 7], run with CMSIS-NN's s4 kernels (packed)


def pack_s4(w: np.ndarray) -> np.ndarray:
    """CMSIS-NN's int4 layout: the flat weights two per byte, low nibble first ([1, 2, 3, 4] -> [0x21, 0x43])."""
    flat = np.asarray(w, np.int64).reshape(-1)
    flat = np.concatenate([flat, np.zeros(flat.size % 2, np.int64)]) & 0xF
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).view(np.int8)


def find_checkout(arg: Path | None) -> Path | None:
    """The CMSIS-NN checkout named by --cmsis-nn or QGEN_CMSIS_NN; SystemExit if it is not one."""
    path = arg if arg is not None else (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None)
    if path is None:
        return None
    if not (path / "Include" / "arm_nnfunctions.h").is_file():
        raise SystemExit(f"{path} is not a CMSIS-NN checkout (no Include/arm_nnfunctions.h). {HOW_TO_GET}")
    return path.resolve()


def describe(checkout: Path) -> str:
    """'CMSIS-NN <commit>' (or the folder name when it is not a git checkout)."""
    rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short=8", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return f"CMSIS-NN {rev}" if rev else f"CMSIS-NN from {checkout.name} (not a git checkout)"


def sources(checkout: Path, c_text: str) -> list[Path]:
    """The library files that define the arm_* functions `c_text` calls, and the functions those call, and so on
    (the closure over CMSIS-NN's own calls: a handful of files instead of the whole library)."""
    defined = {}  # function name -> file, from definitions that start a line
    for path in sorted((checkout / "Source").rglob("*.c")):
        for name in re.findall(r"^[A-Za-z_][\w \*]*?\b(arm_\w+)\s*\(", path.read_text(errors="replace"), re.M):
            defined.setdefault(name, path)
    files: list[Path] = []
    todo = [c_text]
    while todo:
        for name in sorted(set(re.findall(r"\b(arm_\w+)\s*\(", todo.pop()))):
            path = defined.get(name)
            if path is not None and path not in files:
                files.append(path)
                todo.append(path.read_text(errors="replace"))
    return sorted(files)


# ------------------------------------------------------------------------ quantisation and reference

def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real = multiplier * 2^shift / 2^31, multiplier in [2^30, 2^31)."""
    mantissa, shift = np.frexp(real)
    q = int(round(mantissa * 2**31))
    if q == 2**31:
        q, shift = q // 2, shift + 1
    return q, int(shift)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """arm_nn_requantize (default build: no single rounding): left shift, doubling high multiply rounded
    half up, then a rounding right shift with midpoints away from zero."""
    acc = acc.astype(np.int64) << np.maximum(shift, 0)
    high = (acc * multiplier + (1 << 30)) >> 31
    right = np.maximum(-shift, 0)
    mask = (np.int64(1) << right) - 1
    result = high >> right
    threshold = (mask >> 1) + (result < 0)
    return result + ((high & mask) > threshold)


def _accumulators(layer: PeerLayer, x: np.ndarray) -> np.ndarray:
    """int64 accumulators (N, ..., out channels) of the offset input with the weights, plus bias."""
    xo = x.astype(np.int64) + INPUT_OFFSET
    if layer.kind == "fc":
        return xo @ layer.w.astype(np.int64).T + layer.b
    top, bottom, left, right = layer.padding
    xo = np.pad(xo, ((0, 0), (top, bottom), (left, right), (0, 0)))  # zero after the offset = the zero point
    oh, ow = layer.out_shape[:2]
    kh, kw = layer.w.shape[1:3]
    sh, sw = layer.stride
    acc = np.zeros((x.shape[0], oh, ow, layer.w.shape[0]), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xo[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :]
            tap = layer.w[:, i, j, :].astype(np.int64)
            acc += patch * tap[:, 0] if layer.kind == "dw" else patch @ tap.T
    return acc + layer.b


def _windows(layer: PeerLayer, x: np.ndarray) -> np.ndarray:
    """(N, OH, OW, C, KH*KW) pooling windows (no padding in the bench shapes)."""
    oh, ow = layer.out_shape[:2]
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    cells = [x[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] for i in range(kh) for j in range(kw)]
    return np.stack(cells, axis=-1).astype(np.int64)


def quant_params(layer: PeerLayer, x: np.ndarray) -> tuple[list[int], list[int]]:
    """Multipliers and shifts (one for fc, one per channel for conv/dw) mapping the largest accumulator of
    the sample inputs `x` to about 127, as a calibrated model's scales would."""
    acc = _accumulators(layer, x).reshape(-1, layer.w.shape[0])
    peaks = [np.abs(acc).max()] if layer.kind == "fc" else np.abs(acc).max(axis=0)
    pairs = [quantize_multiplier(127.0 / max(int(p), 1)) for p in peaks]
    return [m for m, _ in pairs], [s for _, s in pairs]


def reference(layer: PeerLayer, x: np.ndarray, mult: list[int], shift: list[int]) -> np.ndarray:
    """The int8 outputs (N, out size) CMSIS-NN must produce for inputs `x` (N, *in_shape)."""
    if layer.kind in ("fc", "conv", "dw"):
        y = requantize(_accumulators(layer, x), np.array(mult), np.array(shift)) + OUTPUT_OFFSET
    elif layer.kind == "maxpool":
        y = _windows(layer, x).max(axis=-1)
    else:  # avgpool: TFLite's rounding division, midpoints away from zero, truncating divide
        total, count = _windows(layer, x).sum(axis=-1), layer.kernel[0] * layer.kernel[1]
        rounded = np.where(total > 0, total + count // 2, total - count // 2)
        y = np.sign(rounded) * (np.abs(rounded) // count)
    return np.clip(y, -128, 127).astype(np.int8).reshape(x.shape[0], -1)


# ------------------------------------------------------------------------------------- C harness

def _array(ctype: str, name: str, values, const: bool = True) -> str:
    flat = [int(v) for v in np.asarray(values).ravel()]
    rows = ",\n    ".join(", ".join(map(str, flat[i:i + 16])) for i in range(0, len(flat), 16))
    qualifier = "const " if const else ""
    return f"static {qualifier}{ctype} {name}[{len(flat)}] __attribute__((aligned(16))) = {{\n    {rows}\n}};\n"


def _dims(name: str, n: int, h: int, w: int, c: int) -> str:
    return f"static const cmsis_nn_dims {name} = {{{n}, {h}, {w}, {c}}};\n"


def model_files(layer: PeerLayer, mult: list[int], shift: list[int]) -> dict[str, str]:
    """cm_model.h and cm_model.c: `int cm_run(const int8_t *in, int8_t *out)` calling the CMSIS-NN layer."""
    in_size, out_size = int(np.prod(layer.in_shape)), int(np.prod(layer.out_shape))
    header = (f"/* CMSIS-NN peer layer for qgen's bench (bench/cmsis_nn_peer.py). */\n"
              f"#ifndef CM_MODEL_H\n#define CM_MODEL_H\n#include <stdint.h>\n"
              f"#define CM_INPUT_SIZE {in_size}\n#define CM_OUTPUT_SIZE {out_size}\n"
              f"int cm_run(const int8_t *in, int8_t *out);\n#endif\n")
    body = ["/* CMSIS-NN peer layer for qgen's bench (bench/cmsis_nn_peer.py). */\n",
            "#include \"arm_nnfunctions.h\"\n#include \"cm_model.h\"\n\n",
            f"static int8_t scratch[{SCRATCH_BYTES}] __attribute__((aligned(16)));\n",
            "static cmsis_nn_context ctx = {scratch, 0};\nstatic int prepared;\n"]
    act = "{-128, 127}"
    s4 = layer.bits == 4
    if layer.kind == "fc":
        n_out, n_in = layer.w.shape
        body += [_array("int8_t", "weights", pack_s4(layer.w) if s4 else layer.w), _array("int32_t", "bias", layer.b),
                 _dims("input_dims", 1, 1, 1, n_in), _dims("filter_dims", n_in, 1, 1, n_out),
                 _dims("bias_dims", 1, 1, 1, n_out), _dims("output_dims", 1, 1, 1, n_out),
                 f"static const cmsis_nn_fc_params params = {{{INPUT_OFFSET}, 0, {OUTPUT_OFFSET}, {act}}};\n",
                 f"static const cmsis_nn_per_tensor_quant_params quant = {{{mult[0]}, {shift[0]}}};\n"]
        prepare = ("    const int32_t size = arm_fully_connected_s8_get_buffer_size(&filter_dims);\n"
                   "    if (size > (int32_t)sizeof scratch) return 1;\n"
                   "    if (size > 0) {  /* Helium: TFLM fills the kernel sums in Prepare */\n"
                   f"        if (arm_vector_sum_s8((int32_t *)scratch, {n_in}, {n_out}, weights, {INPUT_OFFSET}, 0, "
                   "bias) != ARM_CMSIS_NN_SUCCESS) return 1;\n    }\n    ctx.size = size;\n")
        call = (f"arm_fully_connected_{'s4' if s4 else 's8'}(&ctx, &params, &quant, &input_dims, in, &filter_dims, "
                "weights, &bias_dims, bias, &output_dims, out)")
    elif layer.kind in ("conv", "dw"):
        (h, w, c), (oh, ow, oc) = layer.in_shape, layer.out_shape
        kh, kw = layer.w.shape[1:3]
        top, _, left, _ = layer.padding
        tiles = f"{{{layer.stride[1]}, {layer.stride[0]}}}, {{{left}, {top}}}, {{1, 1}}, {act}"
        if layer.kind == "conv":
            filt, filter_dims = layer.w, _dims("filter_dims", oc, kh, kw, c)
            params = f"static const cmsis_nn_conv_params params = {{{INPUT_OFFSET}, {OUTPUT_OFFSET}, {tiles}}};\n"
            fn = f"arm_convolve_wrapper_{'s4' if s4 else 's8'}"
        else:
            filt, filter_dims = layer.w[..., 0].transpose(1, 2, 0), _dims("filter_dims", 1, kh, kw, oc)
            params = f"static const cmsis_nn_dw_conv_params params = {{{INPUT_OFFSET}, {OUTPUT_OFFSET}, 1, {tiles}}};\n"
            fn = f"arm_depthwise_conv_wrapper_{'s4' if s4 else 's8'}"
        body += [_array("int8_t", "weights", pack_s4(filt) if s4 else filt), _array("int32_t", "bias", layer.b),
                 _array("int32_t", "multiplier", mult, const=False), _array("int32_t", "shift", shift, const=False),
                 _dims("input_dims", 1, h, w, c), filter_dims, _dims("bias_dims", 1, 1, 1, oc),
                 _dims("output_dims", 1, oh, ow, oc), params,
                 "static const cmsis_nn_per_channel_quant_params quant = {multiplier, shift};\n"]
        prepare = (f"    const int32_t size = {fn}_get_buffer_size(&params, &input_dims, &filter_dims, &output_dims);\n"
                   "    if (size > (int32_t)sizeof scratch) return 1;\n    ctx.size = size;\n")
        call = (f"{fn}(&ctx, &params, &quant, &input_dims, in, &filter_dims, weights, &bias_dims, bias, "
                "&output_dims, out)")
    else:
        (h, w, c), (oh, ow, _) = layer.in_shape, layer.out_shape
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        body += [_dims("input_dims", 1, h, w, c), _dims("filter_dims", 1, kh, kw, 1),
                 _dims("output_dims", 1, oh, ow, c),
                 f"static const cmsis_nn_pool_params params = {{{{{sw}, {sh}}}, {{0, 0}}, {act}}};\n"]
        fn = "arm_max_pool_s8" if layer.kind == "maxpool" else "arm_avgpool_s8"
        size = "0" if layer.kind == "maxpool" else f"arm_avgpool_s8_get_buffer_size({ow}, {c})"
        prepare = (f"    const int32_t size = {size};\n    if (size > (int32_t)sizeof scratch) return 1;\n"
                   "    ctx.size = size;\n")
        call = f"{fn}(&ctx, &params, &input_dims, in, &filter_dims, &output_dims, out)"
    body += ["\n/* TFLM's Prepare: once, outside the measured calls (see EXTRA_CALLS). */\n",
             "static int prepare(void)\n{\n", prepare, "    return 0;\n}\n\n",
             "int cm_run(const int8_t *in, int8_t *out)\n{\n",
             "    if (!prepared) {\n        if (prepare() != 0) return 1;\n        prepared = 1;\n    }\n",
             f"    return {call} == ARM_CMSIS_NN_SUCCESS ? 0 : 1;\n}}\n"]
    return {"cm_model.h": header, "cm_model.c": "".join(body)}


# ------------------------------------------------------------------------------------- measure

def measure(layer: PeerLayer, board: str, checkout: Path, work: Path, plugin: Path) -> float:
    """Instructions of one CMSIS-NN layer call on `board`; SystemExit if its outputs differ from reference()."""
    x = np.random.default_rng(7).integers(-128, 128, (1 + EXTRA_CALLS, *layer.in_shape)).astype(np.int8)
    mult, shift = quant_params(layer, x) if layer.kind in ("fc", "conv", "dw") else ([], [])
    expect = reference(layer, x, mult, shift)
    work.mkdir(parents=True, exist_ok=True)
    files = model_files(layer, mult, shift)
    for name, text in files.items():
        (work / name).write_text(text)
    elf = build_elf(board, [work / "cm_model.c", *sources(checkout, files["cm_model.c"])], [work, checkout / "Include"],
                    PREFIX, work / "build", OPT)
    totals = []
    for n in (1, 1 + EXTRA_CALLS):
        result = run_qemu(board, elf, x[:n].reshape(n, -1), expect.shape[1], plugin=plugin)
        if not np.array_equal(result.outputs, expect[:n]):
            bad = np.argwhere(result.outputs != expect[:n])[0]
            raise SystemExit(f"CMSIS-NN {layer.kind} {layer.in_shape} on {board}: output {tuple(bad)} is "
                             f"{result.outputs[tuple(bad)]}, the NumPy reference says {expect[:n][tuple(bad)]}")
        totals.append(result.instructions_total)
    return (totals[1] - totals[0]) / EXTRA_CALLS


# ------------------------------------------------------------------------------------- LSTM (bench/recurrent.py)

def lstm_params(m, x_frac: int, out_frac: int = 7) -> dict:
    """TFLite's int8 LSTM quantisation of the PyTorch nn.LSTM `m` (one layer, one direction), as CMSIS-NN's test
    generator (Tests/UnitTest/lstm_settings.py) derives it: int8 per-tensor weights per gate, int32 bias at
    input scale * weight scale, int16 Q3.12 gates, int16 cell at a power-of-two scale, int8 hidden state; zero
    points 0 (the input and output formats of qgen's layer, so both run on the same bytes)."""
    w_ih, w_hh = m.weight_ih_l0.detach().double().numpy(), m.weight_hh_l0.detach().double().numpy()
    bias = (m.bias_ih_l0 + m.bias_hh_l0).detach().double().numpy()
    hid = w_hh.shape[1]
    s_x, s_h, gate = 2.0 ** -x_frac, 2.0 ** -out_frac, 2.0 ** -12
    gates = {}
    for k, name in enumerate(("input", "forget", "cell", "output")):  # PyTorch's row order: i, f, g, o
        rows = slice(k * hid, (k + 1) * hid)
        si, sh = np.abs(w_ih[rows]).max() / 127, np.abs(w_hh[rows]).max() / 127
        gates[name] = {"wi": np.clip(np.round(w_ih[rows] / si), -127, 127).astype(np.int8),
                       "wh": np.clip(np.round(w_hh[rows] / sh), -127, 127).astype(np.int8),
                       "bias": np.round(bias[rows] / (s_x * si)).astype(np.int64),
                       "in": quantize_multiplier(s_x * si / gate), "hid": quantize_multiplier(s_h * sh / gate)}
    return {"gates": gates, "s_h": s_h}


def lstm_cell_power(m, x: np.ndarray) -> int:
    """Power-of-two cell scale (TFLite: 2^p with the largest |c| inside int16) from a float run on inputs x."""
    import torch

    with torch.no_grad():
        seq = torch.tensor(x, dtype=torch.float32)
        h = torch.zeros(1, seq.shape[0], m.hidden_size)
        c_max = 0.0
        state = (h, h.clone())
        for t in range(seq.shape[1]):
            _, state = m(seq[:, t:t + 1], state)
            c_max = max(c_max, float(state[1].abs().max()))
    return int(np.ceil(np.log2(max(c_max, 1e-6)))) - 15


def lstm_model_files(m, steps: int, x_frac: int, cell_power: int) -> dict[str, str]:
    """cm_model.h / cm_model.c calling arm_lstm_unidirectional_s8 on (steps, inputs) int8 -> (steps, hidden)."""
    q = lstm_params(m, x_frac)
    inputs, hid = m.input_size, m.hidden_size
    header = (f"/* CMSIS-NN peer LSTM for qgen's bench (bench/cmsis_nn_peer.py). */\n"
              f"#ifndef CM_MODEL_H\n#define CM_MODEL_H\n#include <stdint.h>\n"
              f"#define CM_INPUT_SIZE {steps * inputs}\n#define CM_OUTPUT_SIZE {steps * hid}\n"
              f"int cm_run(const int8_t *in, int8_t *out);\n#endif\n")
    body = ["/* CMSIS-NN peer LSTM for qgen's bench (bench/cmsis_nn_peer.py). */\n",
            "#include <string.h>\n#include \"arm_nnfunctions.h\"\n#include \"cm_model.h\"\n\n",
            f"static int16_t temp1[{hid}], temp2[{hid}], cell_state[{hid}];\nstatic int8_t hidden[{hid}];\n",
            f"static int32_t sums[8][{hid}];\nstatic int prepared;\n"]
    gate_init, prepare = [], []
    act = {"input": "ARM_SIGMOID", "forget": "ARM_SIGMOID", "cell": "ARM_TANH", "output": "ARM_SIGMOID"}
    for k, (name, g) in enumerate(q["gates"].items()):
        body += [_array("int8_t", f"{name}_wi", g["wi"]), _array("int8_t", f"{name}_wh", g["wh"]),
                 _array("int32_t", f"{name}_bias", g["bias"])]
        prepare.append(f"    arm_vector_sum_s8(sums[{2 * k}], {inputs}, {hid}, {name}_wi, 0, 0, {name}_bias);\n"
                       f"    arm_vector_sum_s8(sums[{2 * k + 1}], {hid}, {hid}, {name}_wh, 0, 0, NULL);\n")
        gate_init.append(f"    const cmsis_nn_lstm_gate {name} = {{{g['in'][0]}, {g['in'][1]}, {name}_wi, "
                         f"sums[{2 * k}], {g['hid'][0]}, {g['hid'][1]}, {name}_wh, sums[{2 * k + 1}], {name}_bias, "
                         f"{act[name]}}};\n")
    forget = quantize_multiplier(2.0 ** -15)
    to_cell = quantize_multiplier(2.0 ** (-30 - cell_power))
    out = quantize_multiplier(2.0 ** -30 / q["s_h"])
    body += ["\nint cm_run(const int8_t *in, int8_t *out)\n{\n",
             "    if (!prepared) {  /* TFLM's Prepare: the kernel sums, once, outside the measured calls */\n",
             *prepare, "        prepared = 1;\n    }\n", *gate_init,
             f"    const cmsis_nn_lstm_params params = {{1, 1, {steps}, {inputs}, {hid}, 0, {forget[0]}, {forget[1]},\n"
             f"        {to_cell[0]}, {to_cell[1]}, 32767, {cell_power}, {out[0]}, {out[1]}, 0,\n"
             "        forget, input, cell, output};\n",
             "    cmsis_nn_lstm_context ctx = {temp1, temp2, cell_state, hidden};\n",
             "    memset(cell_state, 0, sizeof cell_state);  /* the initial state: zeros, as TFLM's variables */\n",
             "    memset(hidden, 0, sizeof hidden);\n",
             "    return arm_lstm_unidirectional_s8(in, out, &params, &ctx) == ARM_CMSIS_NN_SUCCESS ? 0 : 1;\n}\n"]
    return {"cm_model.h": header, "cm_model.c": "".join(body)}


def measure_lstm(m, x_q: np.ndarray, x_frac: int, board: str, checkout: Path, work: Path, plugin: Path) -> float:
    """Instructions of one arm_lstm_unidirectional_s8 call over x_q (N, T, I) int8 on `board`; SystemExit if its
    outputs are not PyTorch's LSTM within int8 quantisation error (so the harness is known to run the layer)."""
    import torch

    n, steps, _ = x_q.shape
    xf = x_q.astype(np.float64) * 2.0 ** -x_frac
    files = lstm_model_files(m, steps, x_frac, lstm_cell_power(m, xf))
    work.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (work / name).write_text(text)
    tables = sorted((checkout / "Source").rglob("arm_nntables.c"))  # sigmoid_table_uint16 (no arm_* call to follow)
    elf = build_elf(board, [work / "cm_model.c", *sources(checkout, files["cm_model.c"]), *tables],
                    [work, checkout / "Include"], PREFIX, work / "build", OPT)
    with torch.no_grad():
        want = m(torch.tensor(xf, dtype=torch.float32))[0].numpy().reshape(n, -1)
    totals = []
    for count in (1, n):
        result = run_qemu(board, elf, x_q[:count].reshape(count, -1), want.shape[1], plugin=plugin)
        err = np.abs(result.outputs.astype(np.float64) / 128 - want[:count]).max()
        if err > 0.08:
            raise SystemExit(f"CMSIS-NN LSTM {x_q.shape[1:]} on {board}: max |output - PyTorch| = {err:.3f}")
        totals.append(result.instructions_total)
    return (totals[1] - totals[0]) / (n - 1)
