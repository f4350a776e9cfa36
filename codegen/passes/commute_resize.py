"""Run a pointwise convolution before the upsampling that feeds it: conv1x1(resize(x)) -> resize(conv1x1(x)).

U-Net decoders often write `Upsample(scale_factor=2, mode="bilinear")` then a 1x1 `Conv2d` that reduces the
channels. Both are linear per pixel, and every output pixel of nearest or bilinear upsampling is a convex
combination of input pixels (the weights sum to 1), so with W the 1x1 weights and b the bias

    W (sum_i l_i x_i) + b = sum_i l_i (W x_i + b)      (sum_i l_i = 1)

and the two commute exactly in real arithmetic. Swapped, the convolution runs at the low resolution (4x fewer
MACs at scale 2) and the upsampled tensor has the convolution's (fewer) channels: U-Net's largest buffer
(the full-resolution upsampled decoder tensor) shrinks by cin/cout. The integer model then quantises the two
ops in the new order (one rounding each, as before); it is the integer reference that the C equals.

Only when the upsampled tensor feeds that one convolution (1x1, stride 1, no padding, one group, no fused
activation yet: this runs before fuse_activation) and the convolution does not widen the tensor (cout <= cin).
"""
from __future__ import annotations

from ..ir import Graph, Node, Op

LINEAR_MODES = frozenset({"nearest", "nearest-exact", "bilinear", "linear"})  # convex combinations of pixels


def _pointwise_after(graph: Graph, resize: Node) -> Node | None:
    out = resize.outputs[0]
    users = graph.consumers(out)
    if out in graph.outputs or len(users) != 1 or resize.attrs.get("mode") not in LINEAR_MODES:
        return None
    conv = users[0]
    if conv.op is not Op.CONV2D or conv.inputs[0] != out or conv.outputs[0] in graph.inputs:
        return None
    cout, kh, kw, cin = graph.tensors[conv.inputs[1]].shape
    a = conv.attrs
    if (kh, kw) != (1, 1) or tuple(a.get("stride", (1, 1))) != (1, 1) or any(a.get("padding", (0,) * 4)) \
            or a.get("groups", 1) != 1 or a.get("act") is not None or cout > cin:
        return None
    return conv


def run(graph: Graph) -> Graph:
    for resize in [n for n in graph.nodes if n.op is Op.RESIZE]:
        conv = _pointwise_after(graph, resize)
        if conv is None:
            continue
        x, up, y = resize.inputs[0], resize.outputs[0], conv.outputs[0]
        h, w, _ = graph.tensors[x].shape
        low = graph.fresh_name(f"{y}_low")  # the convolution's output, now at the input resolution
        graph.tensors[low] = type(graph.tensors[y])(low, (h, w, graph.tensors[y].shape[-1]))
        del graph.tensors[up]
        conv.inputs[0], conv.outputs[0] = x, low
        resize.inputs[0], resize.outputs[0] = low, y
        i, j = graph.nodes.index(resize), graph.nodes.index(conv)
        graph.nodes[i], graph.nodes[j] = conv, resize
    return graph
