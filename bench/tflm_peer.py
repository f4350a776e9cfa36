"""The TFLite Micro side of bench/mlperf_tiny.py, run in a Python that has litert-torch==0.10.0 and
tflite-micro==0.dev20261023182759 (an optional bench dependency, never a qgen runtime dependency).

    python bench/tflm_peer.py MODEL_NAME WORK_DIR [MODELS_MODULE]   -> last line of stdout: JSON
      {"flatbuffer_bytes": N, "arena_bytes": N}

Converts the same PyTorch model (MODELS[MODEL_NAME] of MODELS_MODULE, default examples.mlperf_tiny.models;
bench/zoo.py passes examples.zoo.models) to an int8 flatbuffer with the PT2E
quantizer (per-channel symmetric weights, static activations calibrated on the same 32 N(0,1)
samples qgen uses), then finds the smallest arena with which tflite-micro's interpreter runs it.
TFLM aborts the whole process when the arena is too small, so each size is tried in a child process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def convert(name: str, out: Path, models_module: str = "examples.mlperf_tiny.models") -> Path:
    import importlib

    import torch

    sys.path.insert(0, str(ROOT))
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, example = importlib.import_module(models_module).MODELS[name]()
    calib = np.random.default_rng(0).standard_normal((32, *example.shape[1:])).astype(np.float32)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = torch.export.export(model, (example,)).module()
    graph = prepare_pt2e(graph, quantizer)
    for sample in calib:
        graph(torch.from_numpy(sample[None]))
    graph = convert_pt2e(graph, fold_quantize=False)
    edge = litert_torch.convert(graph, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    path = out / f"{name}.tflite"
    edge.export(str(path))
    return path


def runs_with_arena(model: Path, arena: int) -> bool:
    code = ("import sys, numpy as np\n"
            "from tflite_micro.python.tflite_micro import runtime\n"
            f"it = runtime.Interpreter.from_bytes(open({str(model)!r}, 'rb').read(), arena_size={arena})\n"
            "d = it.get_input_details(0)\n"
            "it.set_input(np.zeros(d['shape'], dtype=d['dtype']), 0)\n"
            "it.invoke()\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return True
    missing = [line for line in proc.stderr.splitlines() if line.startswith("Didn't find op")]
    if missing:  # no arena size helps: TFLM has no kernel for an op of the model
        raise RuntimeError(f"TFLM cannot run it: {missing[0]}")
    return False


def smallest_arena(model: Path) -> int:
    hi = 1 << 14
    while not runs_with_arena(model, hi):
        hi *= 2
        if hi > 1 << 26:
            raise RuntimeError("tflite-micro does not run the model with a 64 MB arena")
    lo = hi // 2 if hi > 1 << 14 else 0
    while hi - lo > 64:  # binary search to 64-byte resolution
        mid = (lo + hi) // 2
        if runs_with_arena(model, mid):
            hi = mid
        else:
            lo = mid
    return hi


def run_peer(python: str, name: str, work: Path, models_module: str = "examples.mlperf_tiny.models",
             timeout: float = 1800) -> dict:
    """From a bench in qgen's own Python: run this script in `python` (the TFLM one) on MODELS[name] of
    `models_module`; its JSON, or {"error": the last line it printed to stderr}."""
    proc = subprocess.run([python, __file__, name, str(work), models_module], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    name, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = convert(name, work, *sys.argv[3:4])
    except Exception as exc:  # noqa: BLE001 - the converter's own failure is the answer: one line for run_peer
        sys.exit(f"litert-torch cannot convert it: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
    print(json.dumps({"flatbuffer_bytes": model.stat().st_size, "arena_bytes": smallest_arena(model)}))


if __name__ == "__main__":
    main()
