"""MLPerf Tiny models layer by layer on one or more cores: qgen's instructions next to CMSIS-NN's for the same layer
shapes, and the whole-model ratio qgen / CMSIS-NN (issue 18's targets: M0+ <= 0.85x, M4/M7 <= 0.8x, M55 <= 1.0x).

    python bench/mlperf_tiny_cores.py --cmsis-nn /tmp/CMSIS-NN                      # Cortex-M0+, all four models
    python bench/mlperf_tiny_cores.py --cmsis-nn /tmp/CMSIS-NN --cores cortex-m0plus cortex-m4 cortex-m7 cortex-m55
    python bench/mlperf_tiny_cores.py --cmsis-nn /tmp/CMSIS-NN --cores cortex-m4 --models ic_resnet8 --no-write
Writes bench/MLPERF_TINY_CORES.md (and prints it). One core at a time, then one table:

    for c in cortex-m0plus cortex-m4 cortex-m7 cortex-m55; do
        python bench/mlperf_tiny_cores.py --cmsis-nn /tmp/CMSIS-NN --cores $c --json /tmp/mt_$c.json --no-write
    done
    python bench/mlperf_tiny_cores.py --merge /tmp/mt_cortex-m0plus.json /tmp/mt_cortex-m4.json ...

`--cache FILE` keeps CMSIS-NN's counts (keyed by board, layer shapes, weights and the CMSIS-NN commit): they do
not depend on qgen, so a re-run after a qgen kernel change only measures qgen.

qgen: the model compiled as bench/mlperf_tiny.py does (same random weights and calibration), run under QEMU with
per-layer counting (codegen.deploy.run(per_layer=True)), checked bit-exact against the reference. CMSIS-NN: each
conv / depthwise / fully connected / average pooling layer of qgen's graph as one CMSIS-NN call of the same shapes
(bench/cmsis_nn_peer.py: TFLite-style per-channel quantisation, random weights, output checked against its NumPy
reference), built at -O3 for the same board. qgen's whole model also holds its residual adds, reshapes and
quantisation-free copies; the CMSIS-NN sum has only the layers it can run, so "whole model" is qgen's total over
the sum of CMSIS-NN's layers (what the issue's ratios mean) and "same layers" compares only the layers both run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmsis_nn_peer import HOW_TO_GET, PeerLayer, describe, find_checkout  # noqa: E402
from cmsis_nn_peer import measure as measure_cmsis  # noqa: E402
from mlperf_tiny import calibration  # noqa: E402

from codegen import compile as qcompile  # noqa: E402
from codegen import deploy  # noqa: E402
from codegen.ir import Op  # noqa: E402
from codegen.target import build_plugin  # noqa: E402
from examples.mlperf_tiny.models import MODELS  # noqa: E402

BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500",
          "cortex-m55": "mps3-an547"}
NAMES = {"cortex-m0plus": "Cortex-M0+", "cortex-m4": "Cortex-M4", "cortex-m7": "Cortex-M7", "cortex-m55": "Cortex-M55"}
TARGET = {"cortex-m0plus": 0.85, "cortex-m4": 0.8, "cortex-m7": 0.8, "cortex-m55": 1.0}


def peer_layer(g, n, rng) -> PeerLayer | None:
    """node n of qgen's graph as a CMSIS-NN layer, or None when CMSIS-NN has no call for it."""
    x, y = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    if n.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.LINEAR):
        w = rng.integers(-128, 128, g.tensors[n.inputs[1]].shape)
        b = rng.integers(-2**12, 2**12, w.shape[0])
        kind = {Op.LINEAR: "fc", Op.CONV2D: "conv", Op.DEPTHWISE_CONV2D: "dw"}[n.op]
        top, left, bottom, right = tuple(n.attrs.get("padding", (0, 0, 0, 0))) if kind != "fc" else (0, 0, 0, 0)
        return PeerLayer(kind, tuple(x.shape) if kind != "fc" else (x.size,), tuple(y.shape), w, b,
                         stride=tuple(n.attrs.get("stride", (1, 1))), padding=(top, bottom, left, right))
    if n.op is Op.AVGPOOL2D:
        return PeerLayer("avgpool", tuple(x.shape), tuple(y.shape), kernel=tuple(n.attrs["kernel"]),
                         stride=tuple(n.attrs["stride"]))
    return None


def cached_measure(peer: PeerLayer, board: str, checkout: Path, work: Path, plugin: Path, cache: dict | None) -> float:
    """CMSIS-NN's count for `peer` on `board`, from `cache` when it holds the same layer (shapes, weights, bias,
    board and CMSIS-NN commit), else measured (and stored in `cache`)."""
    if cache is None:
        return measure_cmsis(peer, board, checkout, work, plugin)
    h = hashlib.sha256(repr((board, describe(checkout), peer.kind, peer.in_shape, peer.out_shape, peer.kernel,
                             peer.stride, peer.padding, peer.bits)).encode())
    for a in (peer.w, peer.b):
        if a is not None:
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
    key = h.hexdigest()
    if key not in cache:
        cache[key] = measure_cmsis(peer, board, checkout, work, plugin)
    return cache[key]


def run_model(name: str, cores: list[str], checkout: Path, work: Path, plugin: Path,
              cache: dict | None = None) -> dict:
    model, example = MODELS[name]()
    calib = calibration(example)
    result = qcompile(model, example, calib, prefix=name.split("_")[0], out_dir=work / name)
    g = result.graph
    rows = {}
    for core in cores:
        board = BOARDS[core]
        run = deploy.run(work / name, board, result.quantize_input(calib[:2]), build_dir=work / f"{name}_{core}",
                         per_layer=True)
        rng = np.random.default_rng(0)
        layers = []
        for n, (label, macs, count) in zip(g.nodes, run.per_layer):
            peer = peer_layer(g, n, rng)
            theirs = None
            if peer is not None:
                theirs = cached_measure(peer, board, checkout, work / f"cmsis_{name}_{core}_{len(layers)}", plugin,
                                        cache)
            layers.append((label, n.op.value, macs, count, theirs))
            print(f"{name} {core} {label}: qgen {count:,.0f}, CMSIS-NN {theirs}", flush=True)
        rows[core] = {"total": run.instructions_per_inference, "exact": run.exact, "layers": layers}
    return rows


def tables(results: dict, cores: list[str], peer: str) -> str:
    lines = [f"# MLPerf Tiny models per layer: qgen vs {peer}", "",
             "Generated by `python bench/mlperf_tiny_cores.py --cmsis-nn CMSIS-NN --cores " + " ".join(cores) + "` "
             "(QEMU instruction counts with qgen's plugin; random weights, bench/mlperf_tiny.py's models and "
             "calibration; CMSIS-NN at -O3, qgen at -O2, GCC "
             "arm-none-eabi). Each CMSIS-NN layer is checked against its NumPy reference, each qgen model bit-exact "
             "against qgen's reference.", "",
             "| model | core | qgen instr/inf | CMSIS-NN layers | qgen / CMSIS-NN (whole model) | target | "
             "qgen same layers | same layers ratio | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, per_core in results.items():
        for core in cores:
            r = per_core[core]
            theirs = sum(t for *_, t in r["layers"] if t is not None)
            ours_same = sum(c for *_, c, t in r["layers"] if t is not None)
            ratio = r["total"] / theirs
            lines.append(f"| {name} | {NAMES[core]} | {r['total']:,.0f} | {theirs:,.0f} | {ratio:.2f}x | "
                         f"<= {TARGET[core]}x {'met' if ratio <= TARGET[core] else 'NOT met'} | {ours_same:,.0f} | "
                         f"{ours_same / theirs:.2f}x | {'yes' if r['exact'] else 'NO'} |")
    for name, per_core in results.items():
        for core in cores:
            lines += ["", f"## {name}, {NAMES[core]}", "",
                      "| layer | op | MACs | qgen instr | qgen instr/MAC | CMSIS-NN instr | CMSIS-NN instr/MAC "
                      "| ratio |",
                      "|---|---|---|---|---|---|---|---|"]
            for label, op, macs, count, theirs in per_core[core]["layers"]:
                per = f"{count / macs:.2f}" if macs else "-"
                t_cells = (f"{theirs:,.0f} | {theirs / macs:.2f} | {count / theirs:.2f}x" if theirs is not None and macs
                           else (f"{theirs:,.0f} | - | {count / theirs:.2f}x" if theirs is not None else "- | - | -"))
                lines.append(f"| {label.split(' (')[0]} | {op} | {macs:,} | {count:,.0f} | {per} | {t_cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cmsis-nn", type=Path, default=None, help="a CMSIS-NN source checkout (default: $QGEN_CMSIS_NN)")
    ap.add_argument("--cores", nargs="+", default=["cortex-m0plus"], choices=sorted(BOARDS))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    ap.add_argument("--out", default=str(Path(__file__).with_name("MLPERF_TINY_CORES.md")))
    ap.add_argument("--no-write", action="store_true", help="print the tables, do not write --out")
    ap.add_argument("--json", type=Path, default=None, help="also save the measured counts as JSON (for --merge)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="no run: the tables of earlier --json files (e.g. one per core), in the order given")
    ap.add_argument("--cache", type=Path, default=None, help="a JSON file of CMSIS-NN counts, read and updated")
    args = ap.parse_args()
    if args.merge:
        saved = [json.loads(p.read_text()) for p in args.merge]
        cores = [c for s in saved for c in s["cores"]]
        models = [m for m in MODELS if any(m in s["results"] for s in saved)]
        results = {m: {c: r for s in saved for c, r in s["results"].get(m, {}).items()} for m in models}
        missing = [f"{m} on {c}" for m in models for c in cores if c not in results[m]]
        if missing:
            raise SystemExit(f"--merge: no counts for {', '.join(missing)}")
        peers = {s["peer"] for s in saved}
        if len(peers) != 1:
            raise SystemExit(f"--merge: the files were measured against different CMSIS-NN versions: {peers}")
        peer = peers.pop()
    else:
        checkout = find_checkout(args.cmsis_nn)
        if checkout is None:
            raise SystemExit(HOW_TO_GET)
        cache = json.loads(args.cache.read_text()) if args.cache is not None and args.cache.is_file() else (
            {} if args.cache is not None else None)
        plugin = build_plugin()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                results = {name: run_model(name, args.cores, checkout, Path(tmp), plugin, cache)
                           for name in args.models}
        finally:
            if args.cache is not None:
                args.cache.write_text(json.dumps(cache, indent=0))
        cores, peer = args.cores, describe(checkout)
        if args.json is not None:
            args.json.write_text(json.dumps({"cores": cores, "peer": peer, "results": results}))
    text = tables(results, cores, peer)
    print(text)
    if not args.no_write:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
