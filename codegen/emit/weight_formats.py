"""The C side of compressed weight storage: the parameter structs and kernel calls of sparse and clustered
layers. The encodings themselves and the choice between them are codegen/weight_storage.py (re-exported here).
"""
from __future__ import annotations

import copy

import numpy as np

from ..ir import Graph, Node, Op
from ..weight_storage import *  # noqa: F403 (re-exported: the encodings, storage_choice, summary)
from ..weight_storage import SPARSE_CHUNK, choose


def _geometry(g: Graph, n: Node) -> list[tuple[str, object]]:
    """qg_conv2d_params_t fields (a linear layer is a 1x1 conv on a 1x1xIn input); `weights` is left
    out, so the designated initializer makes it NULL. Dilation and groups are 1: a grouped or dilated conv
    never gets a compressed encoding (weight_storage.candidates)."""
    if n.op is Op.LINEAR:
        oc, c = g.tensors[n.inputs[1]].shape
        h = w = oh = ow = kh = kw = sh = sw = 1
        pt = pl = 0
    else:
        h, w, c = g.tensors[n.inputs[0]].shape
        oh, ow, oc = g.tensors[n.outputs[0]].shape
        _, kh, kw, _ = g.tensors[n.inputs[1]].shape
        (sh, sw), (pt, pl) = n.attrs["stride"], n.attrs["padding"][:2]
    return [("in_h", h), ("in_w", w), ("in_c", c), ("out_h", oh), ("out_w", ow), ("out_c", oc),
            ("k_h", kh), ("k_w", kw), ("stride_h", sh), ("stride_w", sw), ("pad_top", pt), ("pad_left", pl),
            ("dil_h", 1), ("dil_w", 1), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]),
            ("groups", 1)]


def _array(builder, base: str, data: np.ndarray, comment: str) -> str:
    """A constant int8 or uint8 array (builder.array)."""
    return builder.array(base, data, "int8" if data.dtype == np.int8 else "uint8", comment)


KERNELS = {
    ("bitmap", Op.CONV2D): "qg_conv2d_sparse_s8", ("bitmap", Op.LINEAR): "qg_fully_connected_sparse_s8",
    ("index", Op.CONV2D): "qg_conv2d_sparse_s8", ("index", Op.LINEAR): "qg_fully_connected_sparse_s8",
    ("cluster", Op.CONV2D): "qg_conv2d_cluster_s8", ("cluster", Op.LINEAR): "qg_fully_connected_cluster_s8",
    ("cluster", Op.DEPTHWISE_CONV2D): "qg_depthwise_conv2d_cluster_s8",
    ("int4", Op.CONV2D): "qg_conv2d_s4", ("int4", Op.LINEAR): "qg_fully_connected_s4",
    ("int4", Op.DEPTHWISE_CONV2D): "qg_depthwise_conv2d_s4",
}


def _int4_geometry(g: Graph, n: Node) -> list[tuple[str, object]]:
    """_geometry with the layer's own dilation and groups (the int4 kernels take any)."""
    fields = dict(_geometry(g, n))
    if n.op is not Op.LINEAR:
        fields.update(dil_h=n.attrs.get("dilation", (1, 1))[0], dil_w=n.attrs.get("dilation", (1, 1))[1],
                      groups=n.attrs.get("groups", 1))
    return list(fields.items())


def layer_parts(builder, index: int, n: Node, sym: str, struct_name: str, ins: list[str], out_expr: str,
                scratch: str) -> tuple[str, list[tuple[str, object]], str]:
    """(struct type, fields, call) for a layer whose weights are stored compressed (or dense when the
    encoding would not be smaller)."""
    g = builder.g
    enc = choose(g, n)
    if enc.format == "dense":  # not worth it: the ordinary dense kernel (storage_choice; its scratch is planned)
        dense = copy.copy(n)
        dense.attrs = {**n.attrs, "weight_format": "dense"}
        layer = builder.layer(index, dense)
        return layer.struct_type, layer.fields, layer.call
    w_t = g.tensors[n.inputs[1]]
    fields = [(f"conv.{k}", v) for k, v in (_int4_geometry if enc.format == "int4" else _geometry)(g, n)]
    fields.append(("conv.bias", builder.const_tensor(sym, n.inputs[2], "bias")))
    shift = builder.array(f"{sym}_shift", np.array(n.attrs["shift"]), "int8", "requantisation shift per output channel")
    fields.append(("conv.shift", shift))
    what = (f"{list(w_t.shape)} {w_t.qformat}, {enc.nonzero}/{w_t.size} nonzero, "
            f"{enc.nbytes} B instead of {w_t.size} B dense")
    if enc.format == "int4":
        what = (f"{list(w_t.shape)} {w_t.qformat}, [{int(w_t.data.min())}, {int(w_t.data.max())}], "
                f"{enc.nbytes} B instead of {w_t.size} B as int8")
        fields.append(("weights", _array(builder, f"{sym}_weights", enc.arrays["weights"],
                                         f"int4 weights {what}: two per byte, low nibble first")))
        struct_type = "qg_conv2d_s4_params_t"
    elif enc.format == "cluster":
        fields.append(("bits", enc.bits))
        fields.append(("indices", _array(builder, f"{sym}_indices", enc.arrays["indices"],
                                         f"clustered weights {what}: {enc.bits}-bit codebook indices")))
        fields.append(("codebook", _array(builder, f"{sym}_codebook", enc.arrays["codebook"],
                                          f"codebook ({1 << enc.bits} entries)")))
        struct_type = "qg_conv2d_cluster_params_t"
    else:
        fields.append(("format", "QG_SPARSE_BITMAP" if enc.format == "bitmap" else "QG_SPARSE_INDEX"))
        role = "nonzero bitmap" if enc.format == "bitmap" else f"nonzero count per {SPARSE_CHUNK}-channel chunk"
        fields.append(("map", _array(builder, f"{sym}_map", enc.arrays["map"], f"sparse weights {what}: {role}")))
        if enc.format == "index":  # bitmap: `index` left out (NULL)
            fields.append(("index", _array(builder, f"{sym}_index", enc.arrays["index"],
                                           "position of each nonzero in its chunk")))
        fields.append(("values", _array(builder, f"{sym}_values", enc.arrays["values"], "nonzero weights")))
        struct_type = "qg_conv2d_sparse_params_t"
    call = f"{KERNELS[(enc.format, n.op)]}(&{struct_name}, {ins[0]}, {out_expr}, {scratch});"
    return struct_type, fields, call
