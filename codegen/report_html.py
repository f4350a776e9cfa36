"""The visual report: one self-contained HTML file (inline SVG + CSS, a few lines of JS, nothing fetched) or a
PNG with the same charts (matplotlib).

`visual_data(graph, report, ...)` prepares every number and coordinate; templates/report/report.html.j2 only
loops over it (autoescaped: layer names and the model source are data, never markup). Charts:

- layers: one row per node in graph order (the generated C's call order) with its op, output shape and
  Q formats; edges from each producer, skip connections (residual adds, concat inputs) as arcs on the left;
  beside each row, bars of MACs, weight bytes, activation bytes, QEMU instructions (when a per-layer run
  is given) and SQNR (float model vs the integer reference).
- arena: x = layer step, y = byte offset in the arena; one rectangle per storage group (a tensor with its
  in-place aliases: reshapes, element-wise ops written over their input, concat inputs written into the
  concat) from the step that writes it to the last step that reads it. Kernel scratch is its own buffer.
  Two rectangles overlap only where plan_memory allows it (a sliding-window kernel writing its output over
  its dying input): those are outlined and listed.
- board fit (with a board): the model's constant data against flash; the arena and the board's stack
  reserve against RAM (the lower bound that limits.py checks; `qgen firmware` measures the linked image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .ir import Graph

ROW = 22  # px per layer row
HEAD = 34  # px above the first row (column titles)
LANE = 9  # px between skip-edge lanes
BAR_W = 104  # px of a full bar
TEXT_COLS = (("#", 28), ("layer", 190), ("op", 118), ("output", 92), ("Q in \u2192 out", 150))
ARENA_W, ARENA_H = 940, 300  # px of the arena plot area
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac")


@dataclass
class Bar:
    key: str
    title: str
    unit: str
    color: str


BARS = (Bar("macs", "MACs", "", "#4e79a7"), Bar("weight_bytes", "weights", "B", "#f28e2b"),
        Bar("activation_bytes", "activations", "B", "#59a14f"), Bar("instructions", "instructions", "", "#b07aa1"),
        Bar("sqnr", "SQNR", "dB", "#76b7b2"))
SQNR_FULL = 60.0  # dB of a full SQNR bar ("exact" layers too)


def _sqnr(value) -> float:
    """report.json writes non-finite floats as strings ('inf': an exact layer)."""
    return float(value)


def _fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _edges(graph: Graph) -> list[tuple[int, int]]:
    """(producer row, consumer row) for every activation input; row 0 is the model input, node i is row i+1."""
    row_of = {t: 0 for t in graph.inputs}
    edges = []
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            if t in row_of and (row_of[t], i + 1) not in edges:
                edges.append((row_of[t], i + 1))
        for t in node.outputs:
            row_of[t] = i + 1
    return edges


def _lanes(edges: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """A lane (1, 2, ...) for each edge that skips rows, so that no two skip edges share a lane where they
    overlap (interval colouring, shortest first so that nested skips stay close to the spine)."""
    lanes: dict[tuple[int, int], int] = {}
    busy: list[list[tuple[int, int]]] = []
    for a, b in sorted((e for e in edges if e[1] - e[0] > 1), key=lambda e: (e[1] - e[0], e[0])):
        for k, spans in enumerate(busy):
            if all(b <= s or a >= t for s, t in spans):
                spans.append((a, b))
                lanes[(a, b)] = k + 1
                break
        else:
            busy.append([(a, b)])
            lanes[(a, b)] = len(busy)
    return lanes


def _layer_rows(graph: Graph, layers: list[dict], instructions: list[float] | None) -> tuple[list[dict], dict]:
    n = len(layers)
    edges = _edges(graph)
    lanes = _lanes(edges)
    spine = 14 + LANE * (max(lanes.values(), default=0))
    y = [HEAD + ROW * r + ROW // 2 for r in range(n + 1)]  # centre of row r (0: input)
    paths = []
    for a, b in edges:
        k = lanes.get((a, b))
        if k is None:
            paths.append({"d": f"M{spine} {y[a]}V{y[b]}", "skip": False})
        else:
            x = spine - LANE * k
            paths.append({"d": f"M{spine} {y[a] + 4}Q{x} {y[a] + 4} {x} {y[a] + 12}V{y[b] - 12}Q{x} {y[b] - 4} "
                               f"{spine} {y[b] - 4}", "skip": True})
    outputs = set(graph.outputs)
    values = {bar.key: [] for bar in BARS}
    for i, layer in enumerate(layers):
        values["macs"].append(float(layer["macs"]))
        values["weight_bytes"].append(float(layer["weight_bytes"]))
        values["activation_bytes"].append(float(layer["activation_bytes"]))
        values["instructions"].append(float(instructions[i]) if instructions else 0.0)
        values["sqnr"].append(min(_sqnr(layer["sqnr_db"]), SQNR_FULL))
    bars = [bar for bar in BARS if bar.key != "instructions" or instructions]
    x = spine + 10
    columns = []
    for title, w in TEXT_COLS:
        columns.append({"title": title, "x": x})
        x += w
    bar_x0 = x
    for k, bar in enumerate(bars):
        columns.append({"title": bar.title + (f" ({bar.unit})" if bar.unit else ""), "x": bar_x0 + k * (BAR_W + 14)})
    width = bar_x0 + len(bars) * (BAR_W + 14) + 10
    rows = []
    for i, layer in enumerate(layers):
        node = graph.nodes[i] if i < len(graph.nodes) else None
        cells = []
        for k, bar in enumerate(bars):
            v = values[bar.key][i]
            top = max(values[bar.key]) if bar.key != "sqnr" else SQNR_FULL
            if bar.key == "sqnr":
                raw = _sqnr(layer["sqnr_db"])
                label = "exact" if raw == math.inf else ("-inf" if raw == -math.inf else f"{raw:.1f}")
            else:
                label = _fmt_int(v)
            cells.append({"x": bar_x0 + k * (BAR_W + 14), "w": round(BAR_W * max(v, 0.0) / top, 1) if top > 0 else 0,
                          "label": label, "color": bar.color})
        q = f"{layer['q_in']} \u2192 {layer['q_out']}" if layer.get("q_in") else layer["q_out"]
        rows.append({
            "index": layer["index"], "name": layer["name"], "short": _short(layer["name"], 27), "op": layer["op"],
            "shape": "\u00d7".join(str(s) for s in layer["shape"]), "q": q, "q_weights": layer.get("q_weights", ""),
            "source": layer.get("source") or "", "y": y[i + 1],
            "output": node is not None and node.outputs[0] in outputs, "cells": cells,
            "tooltip": _layer_tooltip(layer, instructions[i] if instructions else None),
        })
    chart = {"width": width, "height": HEAD + ROW * (n + 1) + 8, "spine": spine, "paths": paths, "columns": columns,
             "input_y": y[0], "text_x": [c["x"] for c in columns[:len(TEXT_COLS)]], "bar_w": BAR_W}
    return rows, chart


def _layer_tooltip(layer: dict, instructions: float | None) -> str:
    parts = [f"#{layer['index']} {layer['op']} {layer['name']}", f"output {list(layer['shape'])} {layer['q_out']}"]
    if layer.get("q_in"):
        parts.append(f"input {layer['q_in']}")
    if layer.get("q_weights"):
        parts.append(f"weights {layer['q_weights']}")
    parts.append(f"MACs {layer['macs']:,}; weights {layer['weight_bytes']:,} B; activations "
                 f"{layer['activation_bytes']:,} B")
    if instructions is not None:
        per = f" ({instructions / layer['macs']:.2f}/MAC)" if layer["macs"] else ""
        parts.append(f"instructions {instructions:,.0f}{per}")
    parts.append(f"max |error| {float(layer['max_abs_error']):.4g}, SQNR {layer['sqnr_db']} dB")
    if layer.get("source"):
        parts.append(f"source {layer['source']}")
    return "\n".join(parts)


def arena_buffers(graph: Graph) -> list[dict]:
    """The arena's storage groups with their planned offset and lifetime (steps = node indices), as
    plan_memory placed them; buffers outside the arena (model input, outputs, streaming state) are left out."""
    from .passes.plan_memory import SCRATCH, lifetimes

    out = []
    for buf in lifetimes(graph):
        places = [graph.memory[t] for t in buf.tensors if t in graph.memory]
        if buf.tensors[0].startswith(SCRATCH):
            places = [graph.memory[buf.tensors[0]]] if buf.tensors[0] in graph.memory else []
        if not places or any(region != "arena" for region, _ in places):
            continue
        step = int(buf.tensors[0][len(SCRATCH):]) if buf.tensors[0].startswith(SCRATCH) else None
        producer = graph.nodes[buf.first].name if 0 <= buf.first < len(graph.nodes) else "input"
        out.append({"tensors": [f"scratch of {graph.nodes[step].name}"] if step is not None else list(buf.tensors),
                    "offset": min(offset for _, offset in places), "size": buf.size, "first": buf.first,
                    "last": max(buf.last, buf.first), "scratch": step is not None, "producer": producer,
                    "over": buf.over, "distance": buf.distance})
    return sorted(out, key=lambda b: (b["first"], b["offset"]))


def _fit_label(text: str, width: float, height: float) -> str:
    """The label drawn inside an arena box: whole, shortened, or none when the box is too small."""
    chars = int(width // 6.5)
    return "" if height < 13 or chars < 4 else _short(text, chars)


def _overlaps(buffers: list[dict]) -> list[tuple[int, int]]:
    """Pairs of buffers that share bytes at a common step (the planned in-place overlaps)."""
    pairs = []
    for i, a in enumerate(buffers):
        for j in range(i + 1, len(buffers)):
            b = buffers[j]
            if a["first"] <= b["last"] and b["first"] <= a["last"] and a["offset"] < b["offset"] + b["size"] \
                    and b["offset"] < a["offset"] + a["size"]:
                pairs.append((i, j))
    return pairs


def _arena_chart(graph: Graph, arena_size: int) -> dict:
    buffers = arena_buffers(graph)
    steps = max(len(graph.nodes), 1)
    size = max(arena_size, max((b["offset"] + b["size"] for b in buffers), default=0), 1)
    left, top = 70, 12
    cw = ARENA_W / steps
    scale = ARENA_H / size
    overlap_pairs = _overlaps(buffers)
    overlapping = {i for pair in overlap_pairs for i in pair}
    rects = []
    for i, b in enumerate(buffers):
        first = max(b["first"], 0)
        h = max(b["size"] * scale, 1.0)
        label = ", ".join(b["tensors"][:4]) + (f" (+{len(b['tensors']) - 4})" if len(b["tensors"]) > 4 else "")
        rects.append({
            "x": round(left + first * cw, 1), "y": round(top + b["offset"] * scale, 1),
            "w": round(max((b["last"] + 1 - first) * cw - 1, 1.5), 1), "h": round(h, 1),
            "color": "#bab0ac" if b["scratch"] else PALETTE[i % (len(PALETTE) - 1)],
            "overlap": i in overlapping, "step": b["first"],
            "text": _fit_label(b["tensors"][0], (b["last"] + 1 - first) * cw - 6, h),
            "tooltip": f"{label}\n{b['size']:,} B at offset {b['offset']:,}\nlive steps {first}..{b['last']} "
                       f"(written by {b['producer']})" + ("\nscratch" if b["scratch"] else "")
                       + (f"\nin place: {len(b['tensors'])} tensors share these bytes" if len(b["tensors"]) > 1
                          else ""),
        })
    tick_every = max(1, math.ceil(steps / 20))
    xticks = [{"x": round(left + (s + 0.5) * cw, 1), "label": str(s)} for s in range(0, steps, tick_every)]
    yticks = [{"y": round(top + f * size * scale, 1), "label": _fmt_int(f * size)} for f in (0, 0.25, 0.5, 0.75, 1)]
    listed = [{"a": ", ".join(buffers[i]["tensors"][:2]), "b": ", ".join(buffers[j]["tensors"][:2]),
               "bytes": min(buffers[i]["offset"] + buffers[i]["size"], buffers[j]["offset"] + buffers[j]["size"])
               - max(buffers[i]["offset"], buffers[j]["offset"]),
               "step": max(buffers[i]["first"], buffers[j]["first"])} for i, j in overlap_pairs]
    aliases = [{"tensors": ", ".join(b["tensors"]), "size": b["size"]} for b in buffers if len(b["tensors"]) > 1]
    return {"rects": rects, "xticks": xticks, "yticks": yticks, "left": left, "top": top, "plot_w": ARENA_W,
            "plot_h": round(size * scale, 1), "width": left + ARENA_W + 20, "height": top + ARENA_H + 46,
            "overlaps": listed, "aliases": aliases, "buffers": buffers, "size": size, "steps": steps}


def _gauge(label: str, parts: list[tuple[str, int, str]], limit: int) -> dict:
    used = sum(n for _, n, _ in parts)
    full = max(limit, used, 1)
    x, segments = 0.0, []
    for name, n, color in parts:
        w = 100.0 * n / full
        segments.append({"name": name, "bytes": n, "x": round(x, 2), "w": round(w, 2), "color": color})
        x += w
    pct = 100.0 * used / limit if limit else math.inf
    return {"label": label, "used": used, "limit": limit, "pct": pct, "segments": segments,
            "limit_x": round(100.0 * limit / full, 2),
            "state": "over" if used > limit else ("tight" if pct > 80 else "ok")}


def board_fit(report: dict, board) -> dict:
    flash = _gauge("flash", [("model constant data (weights, biases, shifts)", int(report["flash_bytes"]),
                              "#f28e2b")], board.flash_kb * 1024)
    ram = _gauge("RAM", [("activation arena", int(report["arena_bytes"]), "#59a14f"),
                         ("stack reserve", board.stack_kb * 1024, "#bab0ac")], board.ram_kb * 1024)
    return {"name": board.name, "description": board.description, "core": board.core, "clock_mhz": board.clock_mhz,
            "gauges": [flash, ram]}


def visual_data(graph: Graph, report: dict, board=None, run=None) -> dict:
    """Everything the HTML template and the PNG draw. `board`: a codegen.target Board (fit gauges);
    `run`: a deploy.TargetRun with per_layer instructions (qgen run --qemu --per-layer)."""
    layers = report["layers"]
    if len(layers) != len(graph.nodes):
        raise UserError(f"report.json has {len(layers)} layers but the graph {len(graph.nodes)} nodes; "
                        "recompile the model (qgen compile) to refresh both")
    instructions = [count for _, _, count in run.per_layer] if run is not None and run.per_layer else None
    rows, chart = _layer_rows(graph, layers, instructions)
    totals = [("layers", f"{len(layers):,}"), ("MACs / inference", _fmt_int(report["macs"])),
              ("flash (constant data)", f"{report['flash_bytes']:,} B"),
              ("arena (RAM)", f"{report['arena_bytes']:,} B"),
              ("activations (sum)", f"{report.get('activation_bytes_total', 0):,} B")]
    if run is not None and run.instructions_per_inference is not None:
        totals.append((f"instructions / inference ({run.board.name})", _fmt_int(run.instructions_per_inference)))
        if run.instructions_per_mac is not None:
            totals.append(("instructions / MAC", f"{run.instructions_per_mac:.2f}"))
    for key, title in (("float_accuracy", "float accuracy"), ("int8_accuracy_reference", "int8 accuracy"),
                       ("bit_exact", "bit-exact")):
        if key in report:
            totals.append((title, f"{report[key]:.4f}" if isinstance(report[key], float) else str(report[key])))
    inp = report.get("input", {})
    return {
        "model": report.get("model") or graph.source, "prefix": report.get("prefix", ""),
        "input": f"{inp.get('shape', '')} {inp.get('qformat', '')}".strip(),
        "outputs": ", ".join(f"{o['shape']} {o['qformat']}" for o in report.get("outputs", [])),
        "samples": report.get("samples", 0), "totals": [{"name": k, "value": v} for k, v in totals],
        "rows": rows, "chart": chart, "arena": _arena_chart(graph, int(report["arena_bytes"])),
        "fit": board_fit(report, board) if board is not None else None,
        "instructions_board": run.board.name if instructions else None,
    }


def render_html(data: dict) -> str:
    import jinja2

    from .resources import data_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report/report.html.j2").render(d=data)


def render_png(data: dict) -> bytes:
    """The same charts as the HTML, as one PNG (matplotlib, the `bench` extra)."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("qgen report --png needs matplotlib: pip install 'qgen[bench]' (or pip install matplotlib); "
                        "qgen report --html needs nothing more") from None
    import io

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = data["rows"]
    n = len(rows)
    bars = data["chart"]["columns"][len(TEXT_COLS):]
    h_layers = max(3.0, 0.2 * n + 1.0)
    fig = plt.figure(figsize=(3.0 + 2.4 * len(bars), h_layers + 4.6), dpi=80)
    grid = fig.add_gridspec(2, len(bars), height_ratios=[h_layers, 3.6], width_ratios=[1.6] + [1] * (len(bars) - 1))
    totals = "  \u00b7  ".join(f"{t['name']}: {t['value']}" for t in data["totals"])
    fig.suptitle(f"qgen report: {data['model']} (input {data['input']})\n{totals}", fontsize=9)
    names = [f"{r['index']} {_short(r['name'], 22)} ({r['op']})" for r in rows]
    ys = list(range(n))
    for k, column in enumerate(bars):
        ax = fig.add_subplot(grid[0, k])
        widths = [r["cells"][k]["w"] for r in rows]
        ax.barh(ys, widths, color=rows[0]["cells"][k]["color"] if rows else "#4e79a7")
        ax.set_xlim(0, BAR_W * 1.45)
        for y, r in zip(ys, rows):
            ax.text(r["cells"][k]["w"] + 2, y, r["cells"][k]["label"], va="center", fontsize=6)
        ax.set_title(column["title"], fontsize=9)
        ax.set_xticks([])
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_yticks(ys, names if k == 0 else [""] * n, fontsize=6)
    arena = data["arena"]
    ax = fig.add_subplot(grid[1, : len(bars) - 1])
    for b, r in zip(arena["buffers"], arena["rects"]):
        first = max(b["first"], 0)
        ax.add_patch(Rectangle((first, b["offset"]), b["last"] + 1 - first, b["size"], facecolor=r["color"],
                               edgecolor="#d62728" if r["overlap"] else "white", linewidth=1.2 if r["overlap"] else 0.4,
                               alpha=0.85))
    ax.set_xlim(0, arena["steps"])
    ax.set_ylim(arena["size"], 0)
    ax.set_xlabel("layer step", fontsize=8)
    ax.set_ylabel("arena offset (B)", fontsize=8)
    ax.set_title(f"arena: {arena['size']:,} B, one box per buffer over its lifetime (red edge: in-place overlap)",
                 fontsize=9)
    ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[1, len(bars) - 1])
    if data["fit"]:
        gauges = data["fit"]["gauges"]
        for y, g in enumerate(gauges):
            for s in g["segments"]:
                ax.barh(y, s["w"], left=s["x"], color=s["color"])
            ax.axvline(g["limit_x"], ymin=0, ymax=1, color="black", linewidth=0.8)
            ax.text(1, y, f"{g['used']:,} of {g['limit']:,} B ({g['pct']:.0f}%)", va="center", fontsize=7)
        ax.set_yticks(range(len(gauges)), [g["label"] for g in gauges], fontsize=8)
        ax.set_ylim(len(gauges) - 0.5, -0.5)
        ax.set_xlim(0, 100)
        ax.set_xticks([])
        ax.set_title(f"fit on {data['fit']['name']}", fontsize=9)
    else:
        ax.axis("off")
        ax.text(0, 0.5, "board fit: give --board", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(result, html: str | Path | None = None, png: str | Path | None = None, board: str | None = None,
                 run=None) -> dict:
    """Write the HTML and/or PNG report of a CompileResult atomically; returns {path: bytes written}."""
    from .output import write_file_atomic

    b = None
    if board is not None:
        from .target import load_board

        b = load_board(board)
    if not result.report.get("layers"):
        raise UserError(f"'{result.out_dir}' has no per-layer report (report.json); run qgen compile again")
    data = visual_data(result.graph, result.report, b, run)
    contents = {}
    if png is not None:  # rendered before anything is written: a missing matplotlib leaves no file either
        contents[str(png)] = render_png(data)
    if html is not None:
        contents[str(html)] = render_html(data).encode()
    for path, content in contents.items():
        write_file_atomic(Path(path), content)
    return {path: len(content) for path, content in contents.items()}
