"""The architecture acceptance zoo through qgen, side by side with TensorFlow Lite Micro on the same models.

    python bench/zoo.py                       # qgen only (TFLM columns say why they are empty)
    python bench/zoo.py --tflm-python PY      # PY: a Python with litert-torch==0.10.0 and
                                              # tflite-micro==0.dev20261023182759 installed (see bench/tflm_peer.py)
Writes bench/ZOO.md (and prints the same table).

Models: examples/zoo/models.py (written from the papers' layer lists; random weights, randomised BatchNorm /
LayerNorm statistics). Calibration: 32 N(0,1) samples, the same for qgen and TFLM. Instructions: Cortex-M4
(QEMU mps2-an386) with qgen's TCG plugin, deterministic. Top-1 agreement: argmax of qgen's int8 model (the
integer reference, which the C equals bit for bit) against the float PyTorch model on 200 N(0,1) inputs
(per pixel for the segmentation U-Nets).
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
from examples.zoo.models import MODELS  # noqa: E402

BOARD = "mps2-an386"  # Cortex-M4F under QEMU with 4 MB of RAM: every zoo model runs; the size column says
CLOCK_MHZ = 120       # which real board it fits
SIZED_FOR = {"mobilenet_v2": "STM32H743", "mobilenet_v3_small": "STM32F746", "shufflenet_v2": "STM32F746",
             "squeezenet": "STM32F746", "mnasnet_se": "STM32F746", "tcn": "nRF52840", "unet": "STM32F746",
             "unet_bilinear": "STM32F746", "vit_block": "nRF52840", "convnext_atto": "STM32F411",
             "mobilevit_xxs": "STM32F746"}


def params_of(model) -> int:
    return sum(p.numel() for p in model.parameters())


def calibration(example, n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *example.shape[1:])).astype(np.float32)


def agreement(model, result, example) -> float:
    import torch

    x = np.random.default_rng(1).standard_normal((200, *example.shape[1:])).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = np.concatenate([result.predict(x[i:i + 50]) for i in range(0, len(x), 50)])
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))


def run_qgen(name: str, factory, work: Path) -> dict:
    model, example = factory()
    calib = calibration(example)
    start = time.perf_counter()
    result = qcompile(model, example, calib, out_dir=work / name)
    compile_s = time.perf_counter() - start
    run = deploy.run(work / name, BOARD, result.quantize_input(calib[:2]))
    return {"params": params_of(model), "macs": result.report["macs"], "weight_bytes": result.report["flash_bytes"],
            "arena": result.report["arena_bytes"], "arena_copying": copying_concat_arena(model, example, calib),
            "compile_s": compile_s,
            "instructions": run.instructions_per_inference, "bit_exact": run.exact,
            "host_exact": result.verify(calib[:4]).exact, "agreement": agreement(model, result, example)}


def copying_concat_arena(model, example, calib) -> int | None:
    """The arena when every torch.cat copies (passes/concat_in_place switched off): the 'before' of
    concatenation without copies. None for a model without a concat."""
    from codegen.passes import concat_in_place

    saved = concat_in_place.run, concat_in_place.share_formats
    concat_in_place.run = concat_in_place.share_formats = lambda g: g
    try:
        r = qcompile(model, example, calib)
    finally:
        concat_in_place.run, concat_in_place.share_formats = saved
    return r.report["arena_bytes"] if any(n.op.value == "concat" for n in r.graph.nodes) else None


def table(rows: dict, tflm_note: str) -> str:
    head = ["model", "sized for", "params", "MACs", "weights B", "arena B", "arena B, copying concat", "M4 instr/inf",
            "instr/MAC",
            "bit-exact host / M4", "top-1 vs float", "TFLM flatbuffer B", "TFLM arena B", "weights vs TFLM",
            "arena vs TFLM"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        if "line" in r:  # a row kept verbatim from the earlier table (--update)
            out.append(r["line"])
            continue
        q, t = r["qgen"], r.get("tflm", {})
        if "error" in q:
            out.append(f"| {name} | {SIZED_FOR[name]} | " + " | ".join(["-"] * 9) + f" | {q['error']} |" + " - |" * 4)
            continue
        fb, ar = t.get("flatbuffer_bytes"), t.get("arena_bytes")
        out.append("| " + " | ".join([
            name, SIZED_FOR[name], f"{q['params']:,}", f"{q['macs'] / 1e6:.2f} M", f"{q['weight_bytes']:,}",
            f"{q['arena']:,}", f"{q['arena_copying']:,}" if q.get("arena_copying") else "-",
            f"{q['instructions']:,.0f}", f"{q['instructions'] / max(q['macs'], 1):.2f}",
            f"{'yes' if q['host_exact'] else 'NO'} / {'yes' if q['bit_exact'] else 'NO'}", f"{q['agreement']:.1%}",
            f"{fb:,}" if fb else t.get("error", "-"), f"{ar:,}" if ar else "-",
            f"{q['weight_bytes'] / fb:.2f}x" if fb else "-", f"{q['arena'] / ar:.2f}x" if ar else "-"]) + " |")
    notes = [
        "", "- weights B: constant data of the generated C (weights, biases, shifts, tables).",
        "- arena: qgen's one static activation arena (kernel scratch included); input and output live in the "
        "caller's buffers (TFLM's arena holds them too). 'copying concat': the same compile with every torch.cat "
        "copying its inputs (codegen/passes/concat_in_place.py off); the planner keeps an in-place concat only "
        "where it lowers the arena.",
        f"- instructions: executed inside `<prefix>_run` on Cortex-M4 (QEMU {BOARD}), exact and repeatable.",
        f"- TFLM: {tflm_note}",
    ]
    return "\n".join(out + notes) + "\n"


def tflm_columns(path: Path) -> dict:
    """{model: {"flatbuffer_bytes", "arena_bytes"} or {"error"}} read back from an earlier ZOO.md table."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    fb, ar = head.index("TFLM flatbuffer B"), head.index("TFLM arena B")
    out = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[ar] != "-":
            out[cells[0]] = {"flatbuffer_bytes": int(cells[fb].replace(",", "")),
                             "arena_bytes": int(cells[ar].replace(",", ""))}
        else:
            out[cells[0]] = {"error": cells[fb]}
    return out


def table_lines(path: Path) -> dict:
    """{model: its row line} of an earlier ZOO.md table."""
    return {line.split("|")[1].strip(): line for line in path.read_text().splitlines()[4:] if line.startswith("| ")}


def tflm_note_of(path: Path) -> str:
    note = next((line for line in path.read_text().splitlines() if line.startswith("- TFLM: ")), "- TFLM: ")
    return note[len("- TFLM: "):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflm-python", help="Python interpreter with litert-torch and tflite-micro installed")
    ap.add_argument("--out", default=str(Path(__file__).with_name("ZOO.md")))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--tflm-from", metavar="ZOO_MD", help="reuse the TFLM columns of an earlier table (they depend "
                    "on the model only) instead of running TFLM")
    ap.add_argument("--update", action="store_true", help="measure only --models; keep the other rows (and the "
                    "TFLM note, unless --tflm-python is given) of the existing --out table")
    args = ap.parse_args()
    kept = table_lines(Path(args.out)) if args.update else {}
    reused = tflm_columns(Path(args.tflm_from)) if args.tflm_from else {}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            try:
                rows[name] = {"qgen": run_qgen(name, MODELS[name], work)}
            except Exception as exc:  # noqa: BLE001 - a refused model is a row of the table, not a crash
                rows[name] = {"qgen": {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"}}
            if args.tflm_python:
                rows[name]["tflm"] = run_peer(args.tflm_python, name, work / "tflm", "examples.zoo.models", 3600)
            elif name in reused:
                rows[name]["tflm"] = reused[name]
            print(name, json.dumps(rows[name], default=float), flush=True)
    rows = {name: rows.get(name) or {"line": kept[name]} for name in MODELS if name in rows or name in kept}
    if args.update and not args.tflm_python:
        note = tflm_note_of(Path(args.out))
    elif args.tflm_python:
        note = ("same PyTorch model converted with litert-torch 0.10.0 (PT2E int8, per-channel weights, "
                "calibrated on the same samples), arena = smallest size with which tflite-micro "
                "0.dev20261023182759 runs it (probed in child processes; its 64-bit Python runtime keeps larger "
                "bookkeeping than a 32-bit MCU). Where the converter leaves an op in float (e.g. a gate it "
                "does not quantise) the flatbuffer and arena grow accordingly: that is what a TFLM user gets.")
    elif reused:
        note = (f"columns reused from the earlier {Path(args.tflm_from).name} (`--tflm-from`; they depend on the "
                "model only): " + tflm_note_of(Path(args.tflm_from)))
    else:
        note = "not run (pass --tflm-python)."
    text = ("# Architecture zoo: qgen vs TensorFlow Lite Micro\n\n"
            "Generated by `python bench/zoo.py --tflm-python PY` (models: examples/zoo/models.py).\n\n"
            + table(rows, note))
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
