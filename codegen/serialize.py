"""Save and load a quantised graph (JSON for structure, .npz for constants) so that `qgen verify`
can re-run the reference later against a generated output directory."""
from __future__ import annotations

import io
import json

import numpy as np

from .fixed import QFormat
from .ir import Graph, Node, Op, Tensor


def _attr(v):
    if isinstance(v, tuple):
        return {"__tuple__": [_attr(x) for x in v]}
    if isinstance(v, list):
        return [_attr(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _unattr(v):
    if isinstance(v, dict) and "__tuple__" in v:
        return tuple(_unattr(x) for x in v["__tuple__"])
    if isinstance(v, list):
        return [_unattr(x) for x in v]
    return v


def dumps(g: Graph, options: dict | None = None) -> tuple[str, bytes]:
    """(json text, npz bytes). Deterministic: same graph, same bytes. `options`: the compile's
    CompileOptions.to_dict(), recorded so that later commands (split, bundle, micropython) can read them."""
    arrays = {}
    tensors = []
    for name in sorted(g.tensors):
        t = g.tensors[name]
        tensors.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                        "qformat": t.qformat.to_dict() if t.qformat else None, "const": t.is_const})
        if t.is_const:
            arrays[name] = t.data
    doc = {
        "format": "qgen-graph-1", "source": g.source, "inputs": g.inputs, "outputs": g.outputs,
        "tensors": tensors, "arena_size": g.arena_size, "io_layout": dict(sorted(g.io_layout.items())),
        "memory": {k: list(v) for k, v in sorted(g.memory.items())},
        "nodes": [{"name": n.name, "op": n.op.value, "inputs": n.inputs, "outputs": n.outputs,
                   "attrs": {k: _attr(v) for k, v in n.attrs.items()}, "source": n.source} for n in g.nodes],
    }
    if options is not None:
        doc["options"] = options
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return json.dumps(doc, indent=1, sort_keys=True) + "\n", _strip_zip_times(buf.getvalue())


def _strip_zip_times(data: bytes) -> bytes:
    """np.savez stamps the current time into the zip; rewrite it with a fixed one (determinism)."""
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()


def load_options(text: str) -> dict | None:
    """The CompileOptions.to_dict() a qgen_graph.json records (None: written before options were recorded)."""
    return json.loads(text).get("options")


def loads(text: str, npz: bytes) -> Graph:
    doc = json.loads(text)
    if doc.get("format") != "qgen-graph-1":
        raise ValueError("not a qgen graph file")
    arrays = np.load(io.BytesIO(npz))
    tensors = {}
    for t in doc["tensors"]:
        q = QFormat.from_dict(t["qformat"]) if t["qformat"] else None
        tensors[t["name"]] = Tensor(t["name"], tuple(t["shape"]), t["dtype"], q,
                                    arrays[t["name"]] if t["const"] else None)
    nodes = [Node(n["name"], Op(n["op"]), n["inputs"], n["outputs"], {k: _unattr(v) for k, v in n["attrs"].items()},
                  n["source"]) for n in doc["nodes"]]
    g = Graph(tensors, nodes, doc["inputs"], doc["outputs"], doc["source"])
    g.memory = {k: (v[0], int(v[1])) for k, v in doc["memory"].items()}
    g.arena_size = doc["arena_size"]
    g.io_layout = dict(doc.get("io_layout", {}))
    return g


def npy_bytes(a: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (for output directories written in memory first)."""
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()
