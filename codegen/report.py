"""Per-layer and whole-model report: MACs, bytes, Q-formats, float-vs-int error; table, markdown, JSON."""
from __future__ import annotations

import json
import sys

import numpy as np

from .emit.c import model_data
from .fixed import dequantize
from .ir import Graph, Op
from .ops import Trait, has
from .passes.calibrate import format_source
from .reference import run_float, run_int


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    signal = float(np.sum(np.square(reference)))
    noise = float(np.sum(np.square(reference - approx)))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def build(g: Graph, float_graph: Graph, x_float_hwc: np.ndarray, x_i8: np.ndarray, prefix: str) -> dict:
    """Collect the report. x_float_hwc/x_i8: the same samples as float (qgen layout) and int8."""
    fvals = run_float(float_graph, x_float_hwc)
    ivals = run_int(g, x_i8)
    cm = model_data(g, prefix)
    array_bytes = {a.name: a.nbytes for a in cm.arrays}
    layers = []
    for index, (node, cl) in enumerate(zip(g.nodes, cm.layers)):
        out = g.tensors[node.outputs[0]]
        deq = dequantize(ivals[out.name], out.qformat)
        ref = fvals[out.name if out.name in fvals else node.inputs[0]]  # an early copy (concat_in_place): its input's
        wbytes = sum(b for name, b in array_bytes.items() if name.startswith(f"{prefix}_l{index}_"))
        layers.append({
            "index": index, "name": node.name, "op": node.op.value, "source": node.source,
            "shape": list(out.shape),
            "q_in": " ".join(str(g.tensors[t].qformat) for t in node.inputs if not g.tensors[t].is_const),
            "q_out": str(out.qformat),
            "q_weights": str(g.tensors[node.inputs[1]].qformat) if has(node.op, Trait.WEIGHTED) else "",
            "macs": cl.macs, "weight_bytes": wbytes,
            "activation_bytes": 0 if node.op is Op.RESHAPE else out.nbytes,
            "max_abs_error": float(np.max(np.abs(deq - ref))) if ref.size else 0.0,
            "sqnr_db": sqnr_db(ref, deq),
        })
        if g.calibration:  # a method other than minmax (minmax reports stay as they were)
            source = format_source(g, out.name)
            layers[-1]["calibration"] = "fixed" if source is None else g.calibration.get(source, "minmax")
    inp = g.tensors[g.inputs[0]]
    return {
        "model": g.source, "prefix": prefix, "layers": layers,
        "input": {"shape": list(inp.shape), "qformat": str(inp.qformat)},
        "outputs": [{"shape": list(g.tensors[o].shape), "qformat": str(g.tensors[o].qformat)} for o in g.outputs],
        "arena_bytes": g.arena_size, "flash_bytes": cm.weight_bytes, "macs": cm.macs,
        "activation_bytes_total": sum(layer["activation_bytes"] for layer in layers),
        "samples": int(x_i8.shape[0]),
        **_calibration_fields(g),
    }


def _calibration_fields(g: Graph) -> dict:
    """The tensors where the calibration method fell back to minmax (calibrate.py's guard); {} for minmax."""
    if not g.calibration:
        return {}
    fallbacks = []
    for tensor, label in g.calibration.items():
        if "fell back" in label:
            node = g.producer(tensor)
            fallbacks.append({"tensor": tensor, "layer": node.name if node is not None else "input",
                              "calibration": label})
    return {"calibration_fallbacks": fallbacks}


def _fmt_db(v: float) -> str:
    return "exact" if v == float("inf") else f"{v:.1f}"


COLUMNS = ("#", "layer", "op", "output", "Q in", "Q w", "Q out", "MACs", "weights B", "act B", "max err", "SQNR dB")


def _row(layer: dict) -> list[str]:
    return [str(layer["index"]), layer["name"], layer["op"], "x".join(map(str, layer["shape"])), layer["q_in"],
            layer["q_weights"], layer["q_out"], f"{layer['macs']:,}", f"{layer['weight_bytes']:,}",
            f"{layer['activation_bytes']:,}", f"{layer['max_abs_error']:.4f}", _fmt_db(layer["sqnr_db"])]


def _totals(r: dict) -> list[str]:
    lines = [f"arena (RAM): {r['arena_bytes']:,} B", f"flash (constant data): {r['flash_bytes']:,} B",
             f"MACs/inference: {r['macs']:,}", f"input {r['input']['shape']} {r['input']['qformat']}"]
    for key in ("float_accuracy", "int8_accuracy_reference", "int8_accuracy_c"):
        if key in r:
            lines.append(f"{key.replace('_', ' ')}: {r[key]:.4f}")
    wide = [layer["name"] for layer in r["layers"] if layer["q_out"].startswith("s16")]
    if wide:
        lines.append(f"int16 activations: {', '.join(wide)}")
    lines += r.get("precision_lines", [])
    for fb in r.get("calibration_fallbacks", []):
        lines.append(f"calibration: layer {fb['layer']} (%{fb['tensor']}) uses {fb['calibration']}")
    if "bit_exact" in r:
        lines.append(f"bit-exact: {r['bit_exact']}")
    if "compile_seconds" in r:
        lines.append(f"compile time: {r['compile_seconds']:.2f} s")
    return lines


def to_markdown(r: dict) -> str:
    out = [f"# qgen report: {r['model']} (prefix `{r['prefix']}`)", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_row(layer)) + " |" for layer in r["layers"]]
    out += ["", *[f"- {line}" for line in _totals(r)], "",
            f"Errors are float model vs int8 reference (dequantised) over {r['samples']} samples.", ""]
    return "\n".join(out)


def to_json(r: dict) -> str:
    def clean(v):
        if isinstance(v, float) and not np.isfinite(v):
            return str(v)
        if isinstance(v, float):  # float-model errors: 6 digits, not the last bits of one summation order
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(r), indent=1, sort_keys=True) + "\n"


# Per-layer table columns for a terminal, most useful first: below the terminal's width the last ones are
# left out (named under the table) rather than ellipsised; numbers are never cut, long layer names wrap.
# (header, index into COLUMNS, right-aligned)
_TERMINAL_COLUMNS = tuple((header, COLUMNS.index(key), right) for header, key, right in (
    ("#", "#", True), ("layer", "layer", False), ("op", "op", False), ("output", "output", False),
    ("Q out", "Q out", False), ("MACs", "MACs", True), ("wt B", "weights B", True), ("SQNR", "SQNR dB", True),
    ("Q w", "Q w", False), ("act B", "act B", True), ("Q in", "Q in", False), ("max err", "max err", True)))
_NAME = COLUMNS.index("layer")
_MIN_NAME_WIDTH = 8  # the layer column may wrap down to this


def fit_columns(rows: list[list[str]], width: int) -> int:
    """How many of _TERMINAL_COLUMNS (a prefix: they are in priority order) fit in `width` characters.

    Every kept column gets its widest cell (numbers are never cut); only the layer name may wrap, down to
    _MIN_NAME_WIDTH. The first four (# layer op output) are always kept.
    """
    used = 0
    for n, (header, i, _) in enumerate(_TERMINAL_COLUMNS):
        w = max([len(header)] + [len(row[i]) for row in rows])
        if i == _NAME:
            w = min(w, _MIN_NAME_WIDTH)
        if used + w + 2 > width and n >= 4:  # " cell " per column
            return n
        used += w + 2
    return len(_TERMINAL_COLUMNS)


def terminal_console(**kwargs):
    """A rich Console for qgen's own output: a closed pipe raises BrokenPipeError (cli.main ends quietly
    with status 141, as for any other write) instead of rich's own exit with status 1."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _Console(**kwargs)


def print_table(r: dict, console=None) -> None:
    from rich import box
    from rich.table import Table

    console = console or terminal_console(width=None if sys.stdout.isatty() else 160)  # logs get the full table
    rows = [_row(layer) for layer in r["layers"]]
    n = fit_columns(rows, console.width)
    kept, hidden = _TERMINAL_COLUMNS[:n], _TERMINAL_COLUMNS[n:]
    table = Table(title=f"qgen: {r['model']}", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header, i, right in kept:
        table.add_column(header, justify="right" if right else "left", no_wrap=i != _NAME, overflow="fold",
                         min_width=_MIN_NAME_WIDTH if i == _NAME else None)
    for row in rows:
        table.add_row(*(row[i] for _, i, _ in kept))
    console.print(table)
    if hidden:
        console.print(f"({', '.join(header for header, _, _ in hidden)}: not shown at {console.width} columns; "
                      "see report.md)")
    for line in _totals(r):
        console.print(line)
