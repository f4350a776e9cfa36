"""MLPerf Tiny reference networks through qgen: size, memory, compile time, Cortex-M4 instructions,
side by side with TensorFlow Lite Micro on the same PyTorch models.

    python bench/mlperf_tiny.py                       # qgen only (TFLM columns say why they are empty)
    python bench/mlperf_tiny.py --tflm-python PY      # PY: a Python with litert-torch==0.10.0 and
                                                      # tflite-micro==0.dev20261023182759 installed
    python bench/mlperf_tiny.py --int4                # + the same models with int4 weights (--weights int4)
Writes bench/MLPERF_TINY.md (and prints the same table).

Instructions are counted under QEMU (mps2-an386, Cortex-M4) with qgen's TCG plugin: deterministic.
"ms @120 MHz" divides them by 120 MHz, i.e. assumes one instruction per cycle; a real M4 takes more
cycles per load/branch, so read it as a lower bound next to the published NUCLEO-L4R5ZI timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tflm_peer import run_peer  # noqa: E402  (bench/ is the script's directory)

from codegen import compile as qcompile  # noqa: E402
from codegen import deploy  # noqa: E402
from examples.mlperf_tiny.models import MODELS  # noqa: E402

# naive ping-pong int8 activation floors from the issue, and published latencies (ms) on
# NUCLEO-L4R5ZI (Cortex-M4F @ 120 MHz) for orientation: (TFLM, X-CUBE-AI)
FLOOR = {"kws_ds_cnn": 16000, "vww_mobilenet_v1_025": 55296, "ic_resnet8": 49152, "ad_fc_autoencoder": 768}
PUBLISHED_MS = {"kws_ds_cnn": (181.9, 62.9), "vww_mobilenet_v1_025": (600.6, 118.7), "ic_resnet8": (704.2, 214.0),
                "ad_fc_autoencoder": (10.05, 6.86)}
BOARD = "stm32f446"  # Cortex-M4F; QEMU mps2-an386
CLOCK_MHZ = 120


def params_of(model) -> int:
    """Parameters that reach the device: conv/linear weights and biases (BatchNorm folds into them)."""
    import torch.nn as nn

    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
               for p in m.parameters())


def calibration(example, n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *example.shape[1:])).astype(np.float32)


def run_qgen(name: str, factory, work: Path, weights: str = "int8") -> dict:
    model, example = factory()
    calib = calibration(example)
    start = time.perf_counter()
    name = name if weights == "int8" else f"{name}_{weights}"
    result = qcompile(model, example, calib, prefix=name.split("_")[0], out_dir=work / name, weights=weights)
    compile_s = time.perf_counter() - start
    fw = deploy.build(work / name, BOARD, work / f"{name}_build")
    run = deploy.run(work / name, BOARD, result.quantize_input(calib[:2]))
    sizes = fw.elf.sizes
    return {
        "params": params_of(model), "macs": result.report["macs"], "weight_bytes": result.report["flash_bytes"],
        "total_flash": sizes.text + sizes.rodata + sizes.data, "arena": result.report["arena_bytes"],
        "compile_s": compile_s, "instructions": run.instructions_per_inference, "bit_exact": run.exact,
        "instr_per_mac": run.instructions_per_mac,
    }


def table(rows: dict, tflm_note: str) -> str:
    head = ["model", "params", "MACs", "weights B", "total flash B (M4 ELF)", "arena B", "floor B",
            "compile s", "M4 instr/inf", "instr/MAC", "ms @120MHz", "bit-exact", "TFLM flatbuffer B", "TFLM arena B",
            "arena vs TFLM", "published ms TFLM / X-CUBE-AI"]
    int4 = any("int4" in r for r in rows.values())
    if int4:
        head += ["int4 weights B", "int4 weights vs TFLM flatbuffer", "int4 M4 instr/inf", "int4 bit-exact"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        q, t = r["qgen"], r.get("tflm", {})
        fb, ar = t.get("flatbuffer_bytes"), t.get("arena_bytes")
        ratio = f"{q['arena'] / ar:.2f}x" if ar else "-"
        pub = PUBLISHED_MS[name]
        out.append("| " + " | ".join([
            name, f"{q['params']:,}", f"{q['macs'] / 1e6:.2f} M", f"{q['weight_bytes']:,}", f"{q['total_flash']:,}",
            f"{q['arena']:,}", f"{FLOOR[name]:,}", f"{q['compile_s']:.2f}", f"{q['instructions']:,.0f}",
            f"{q['instr_per_mac']:.2f}", f"{q['instructions'] / (CLOCK_MHZ * 1e3):.1f}",
            "yes" if q["bit_exact"] else "NO", f"{fb:,}" if fb else t.get("error", "-"), f"{ar:,}" if ar else "-",
            ratio, f"{pub[0]} / {pub[1]}",
            *(_int4_cells(r.get("int4"), fb) if int4 else [])]) + " |")
    notes = [
        "", "- weights B: constant data of the generated C (weights, biases, shifts, tables).",
        "- total flash: .text + .rodata + .data of the linked Cortex-M4 firmware, including the ~2 KB test "
        "harness and the kernel library.",
        "- arena: qgen's one static activation arena (kernel scratch included). The model input and output "
        "live in the caller's buffers, so they are not in it; the floor counts naive ping-pong int8 buffers.",
        f"- instructions: executed inside `<prefix>_run` on Cortex-M4 (QEMU {BOARD} → mps2-an386), exact and "
        "repeatable; ms @120 MHz assumes 1 instruction/cycle (a lower bound).",
        f"- TFLM: {tflm_note}",
    ]
    if int4:
        notes.append("- int4: the same models compiled with `--weights int4` (every conv / depthwise / linear layer "
                     "4-bit, activations int8); weights B vs TFLM's int8 flatbuffer (target <= 0.5x). These models "
                     "have random weights, so no accuracy: int4 accuracy on trained tasks is in bench/QUANT.md.")
    return "\n".join(out + notes) + "\n"


def _int4_cells(q4: dict | None, flatbuffer: int | None) -> list[str]:
    if not q4:
        return ["-"] * 4
    return [f"{q4['weight_bytes']:,}", f"{q4['weight_bytes'] / flatbuffer:.2f}x" if flatbuffer else "-",
            f"{q4['instructions']:,.0f}", "yes" if q4["bit_exact"] else "NO"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflm-python", help="Python interpreter with litert-torch and tflite-micro installed")
    ap.add_argument("--out", default=str(Path(__file__).with_name("MLPERF_TINY.md")))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--int4", action="store_true", help="also compile and run each model with int4 weights")
    args = ap.parse_args()
    rows = {}
    # warm-up: the first torch.export in a process pays a one-time start-up of a few seconds, which is
    # not the compiler's time; compile times below are per model in a warm process
    import torch

    qcompile(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.zeros(1, 2), np.zeros((1, 2), np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            rows[name] = {"qgen": run_qgen(name, MODELS[name], work)}
            if args.int4:
                rows[name]["int4"] = run_qgen(name, MODELS[name], work, weights="int4")
            if args.tflm_python:
                rows[name]["tflm"] = run_peer(args.tflm_python, name, work)
            print(name, json.dumps(rows[name], default=float), flush=True)
    if args.tflm_python:
        note = ("same PyTorch model converted with litert-torch 0.10.0 (PT2E int8, per-channel weights, "
                "calibrated on the same samples), arena = smallest size with which tflite-micro "
                "0.dev20261023182759 runs it (probed in child processes). Its Python runtime is 64-bit, so "
                "its arena bookkeeping is larger than on a 32-bit MCU.")
    else:
        note = "not run (pass --tflm-python)."
    text = ("# MLPerf Tiny models: qgen vs TensorFlow Lite Micro\n\n"
            "Generated by `python bench/mlperf_tiny.py` (random weights, randomised BatchNorm statistics, "
            "32 N(0,1) calibration samples).\n\n" + table(rows, note))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
