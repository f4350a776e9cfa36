"""Fold explicit zero padding (nn.ZeroPad2d, F.pad) into the convolution or average pooling that
consumes it: they already pad with zeros, so the copy disappears. Max pooling pads with -inf, so a
zero pad before it stays (qg_pad_s8)."""
from __future__ import annotations

from ..ir import Graph, Op
from ..ops import Trait, with_trait

FOLDS_INTO = with_trait(Trait.FOLDS_PAD)
PAD_LIMIT = 255  # pad_top / pad_left are uint8_t in the kernels' parameter structs (qg_kernels.h)


def run(graph: Graph) -> Graph:
    for pad in [n for n in graph.nodes if n.op is Op.PAD]:
        users = graph.consumers(pad.outputs[0])
        if len(users) != 1 or users[0].op not in FOLDS_INTO or pad.outputs[0] in graph.outputs \
                or "padding" not in users[0].attrs:  # adaptive pooling windows: no padding to fold into
            continue
        user = users[0]
        if any(a + b > PAD_LIMIT for a, b in zip(user.attrs["padding"], pad.attrs["padding"])):
            continue  # the folded padding would not fit the kernels' uint8_t pad fields: the pad stays a copy
        for key in ("padding", "count_pad"):  # the pad's zeros are input cells: an average counts them
            if key in user.attrs:
                user.attrs[key] = tuple(a + b for a, b in zip(user.attrs[key], pad.attrs["padding"]))
        user.inputs[0] = pad.inputs[0]
        graph.nodes.remove(pad)
        del graph.tensors[pad.outputs[0]]
    return graph
