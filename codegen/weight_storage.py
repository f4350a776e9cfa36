"""How a layer's int8 weights are stored in the generated C (dense, bitmap, index, cluster): the encodings,
their sizes and the choice between them. Not an emitter: the memory planner (kernel_abi), the pruning pass
and the C emitter (emit/weight_formats.py) all read the same `storage_choice`.
Compressed storage of a layer's int8 weights in the generated C: sparse and clustered formats.

The quantised IR and the reference keep dense int8 weights; a format here is only another encoding
of the same integers, with its own kernel (firmware/kernels/qg_sparse_s8.c, qg_cluster_s8.c), so the
C output stays byte-identical to the reference.

A pass asks for compression with `node.attrs["weight_format"]`:
  "sparse"  -> the smallest of dense, bitmap, index     (conv2d, linear)
  "cluster" -> the smallest of dense, cluster           (conv2d, depthwise, linear)
  "auto"    -> the smallest of all that apply
  "bitmap" | "index" | "cluster!" -> that encoding, even if larger (tests, benchmarks)
The choice is made here, on the quantised weights (`storage_choice`, read by the memory planner and the
emitter alike), so a layer whose encoding would not be smaller stays dense ("dense when sparsity is low").

Formats (weights seen as segments: conv (Cout, KH*KW, Cin), linear (Out, 1, In); L = segment length):
  bitmap:  per segment ceil(L/8) bytes of a nonzero mask (bit i LSB first = channel i), then the
           nonzero int8 values in weight order.           bytes = Cout*T*ceil(L/8) + nnz
  index:   per segment, one uint8 count per chunk of 255 channels, a uint8 position in the chunk for
           each nonzero, and the nonzero values.          bytes = Cout*T*ceil(L/255) + 2*nnz
  cluster: every weight is an index into an int8 codebook of the layer's distinct values
           (2^b entries, b = ceil(log2(distinct)) in 1..8), packed b bits per weight LSB first,
           plus one padding byte.                          bytes = ceil(n*b/8) + 1 + 2^b
  int4:    weights quantised to 4 bits (q in [-8, 7], passes/quantize.py `weight_bits`), two per byte, low
           nibble first: byte j of a row holds weight 2j in bits 0-3 and weight 2j+1 in bits 4-7 (two's
           complement nibbles). conv2d / linear: each output channel's row (k_h*k_w*in_c/groups, or in_features
           weights) starts on a byte, an odd row ends with a zero high nibble; depthwise: the whole
           (out_c, k_h, k_w) tensor is one stream.   bytes = rows * ceil(K/2)  (depthwise ceil(n/2))
           Not a compression request: a layer whose weights are 4-bit is always stored so (qg_*_s4.c).
Bitmap wins at moderate sparsity (1/8 byte per weight + 1 per nonzero: 0.325x dense at 80%),
index at very high sparsity (> ~94%), cluster for few distinct values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError
from .ir import Graph, Node, Op
from .ops import SPEC, Trait, has, with_trait

SPARSE_CHUNK = 255  # QG_SPARSE_CHUNK: chunk length of the index format (uint8 count and position)
SPARSE_OPS = with_trait(Trait.MATMUL)


def _has_kernel(op: Op, variant: str) -> bool:
    try:
        return SPEC[op].kernel(variant)[0] is not None
    except ValueError:
        return False


# weighted ops with a clustered kernel (conv_transpose2d has none: its weights stay dense, values may be clustered)
CLUSTER_OPS = tuple(op for op in with_trait(Trait.WEIGHTED) if _has_kernel(op, "cluster"))
# weighted ops with packed int4 kernels (qg_conv2d_s4.c)
INT4_OPS = tuple(op for op in with_trait(Trait.WEIGHTED) if _has_kernel(op, "int4"))
REQUESTS = {
    "sparse": ("bitmap", "index"),
    "cluster": ("cluster",),
    "auto": ("bitmap", "index", "cluster"),
}
FORCED = {"bitmap": "bitmap", "index": "index", "cluster!": "cluster"}


@dataclass
class Encoding:
    format: str  # dense | bitmap | index | cluster
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # role -> uint8/int8 data (non-empty)
    nonzero: int = 0
    bits: int = 0  # cluster index width

    @property
    def nbytes(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))


def _nonempty(a: np.ndarray, dtype) -> np.ndarray:
    """C has no zero-length arrays: an empty stream is stored as one unused zero byte."""
    a = np.asarray(a, dtype=dtype).reshape(-1)
    return a if a.size else np.zeros(1, dtype)


def segments(op: Op, w: np.ndarray) -> np.ndarray:
    """Weights as (rows, taps, segment length): conv (Cout, KH*KW, Cin), linear (Out, 1, In)."""
    if op is Op.CONV2D:
        return w.reshape(w.shape[0], w.shape[1] * w.shape[2], w.shape[3])
    if op is Op.LINEAR:
        return w.reshape(w.shape[0], 1, w.shape[1])
    raise ValueError(f"no sparse segments for {op.value}")


def sparse_bytes(op: Op, shape: tuple[int, ...], nonzero: int) -> int:
    """Bytes of the smaller sparse encoding (bitmap or index) of weights of `shape` with `nonzero` nonzeros."""
    rows, taps, length = segments(op, np.empty(shape, np.int8)).shape
    nnz = max(nonzero, 1)
    return min(rows * taps * -(-length // 8) + nnz, rows * taps * -(-length // SPARSE_CHUNK) + 2 * nnz)


def encode_dense(w: np.ndarray) -> Encoding:
    return Encoding("dense", {"weights": np.asarray(w, np.int8).reshape(-1)}, int(np.count_nonzero(w)))


def encode_bitmap(seg: np.ndarray) -> Encoding:
    rows, taps, length = seg.shape
    nz = seg != 0
    padded = np.zeros((rows, taps, -(-length // 8) * 8), bool)
    padded[..., :length] = nz
    mask = np.packbits(padded, axis=-1, bitorder="little")
    return Encoding("bitmap", {"map": _nonempty(mask, np.uint8), "values": _nonempty(seg[nz], np.int8)},
                    int(nz.sum()))


def encode_index(seg: np.ndarray) -> Encoding:
    rows, taps, length = seg.shape
    chunks = -(-length // SPARSE_CHUNK)
    padded = np.zeros((rows, taps, chunks * SPARSE_CHUNK), seg.dtype)
    padded[..., :length] = seg
    padded = padded.reshape(rows, taps, chunks, SPARSE_CHUNK)
    nz = padded != 0
    counts = nz.sum(axis=-1)
    position = np.nonzero(nz)[-1]  # C order: the kernel's walk order
    return Encoding("index", {"map": _nonempty(counts, np.uint8), "index": _nonempty(position, np.uint8),
                              "values": _nonempty(padded[nz], np.int8)}, int(nz.sum()))


def encode_cluster(w: np.ndarray) -> Encoding:
    flat = np.asarray(w).reshape(-1)
    values = np.unique(flat)  # sorted distinct int8 values: the codebook
    bits = max(1, math.ceil(math.log2(len(values)))) if len(values) else 1
    codebook = np.zeros(1 << bits, np.int8)
    codebook[:len(values)] = values
    idx = np.searchsorted(values, flat).astype(np.uint32)
    stream = ((idx[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(bool).reshape(-1)
    packed = np.concatenate([np.packbits(stream, bitorder="little"), np.zeros(1, np.uint8)])  # + padding byte
    return Encoding("cluster", {"indices": packed, "codebook": codebook}, int(np.count_nonzero(flat)), bits)


def int4_rows(op: Op, w: np.ndarray) -> np.ndarray:
    """The rows the int4 stream packs, each starting on a byte: conv2d / linear one per output channel,
    depthwise the whole tensor as one row."""
    w = np.asarray(w)
    return w.reshape(1, -1) if op is Op.DEPTHWISE_CONV2D else w.reshape(w.shape[0], -1)


def encode_int4(op: Op, w: np.ndarray) -> Encoding:
    rows = int4_rows(op, w).astype(np.int64)
    if rows.size and (rows.min() < -8 or rows.max() > 7):
        raise ValueError(f"int4 weights must lie in [-8, 7], got [{rows.min()}, {rows.max()}]")
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), np.int64)], axis=1)
    nib = (rows & 0xF).astype(np.uint8)
    packed = nib[:, 0::2] | (nib[:, 1::2] << 4)
    return Encoding("int4", {"weights": _nonempty(packed, np.uint8)}, int(np.count_nonzero(w)), 4)


def int4_bytes(op: Op, shape: tuple[int, ...]) -> int:
    n = int(np.prod(shape))
    if op is Op.DEPTHWISE_CONV2D or not n:
        return max(-(-n // 2), 1)
    return shape[0] * -(-(n // shape[0]) // 2)


def int4_scratch(fn: str, g: Graph, n: Node, plain: bool) -> int:
    """Scratch bytes of the int4 kernels (mirror qg_*_s4_buffer_size in qg_conv2d_s4.c; plain: a core
    without the DSP extension, whose paths need less; the generated C reserves the DSP size)."""
    from .kernel_abi import depthwise_conv2d_buffer_size, depthwise_conv2d_plain_buffer_size

    def up(v: int, m: int) -> int:
        return -(-v // m) * m

    w = g.tensors[n.inputs[1]].shape
    if fn == "qg_fully_connected_s4":
        return 0 if plain else 2 * up(w[1], 8)
    cout, kh, kw = w[0], w[1], w[2]
    cin = g.tensors[n.inputs[0]].shape[2]
    if fn == "qg_depthwise_conv2d_s4":  # the unpacked int8 weights, then qg_depthwise_conv2d_s8's scratch
        dw = (depthwise_conv2d_plain_buffer_size if plain else depthwise_conv2d_buffer_size)(cin, kh, kw, cout)
        return up(cout * kh * kw, 4) + dw
    k8 = up(kh * kw * (cin // n.attrs.get("groups", 1)), 8)
    # DSP: 4 int16 columns + the int8 column they are gathered into; Helium: 4 columns in 32-value blocks + that one
    return k8 if plain else max(9 * k8, 4 * up(k8, 32) + k8)


# ------------------------------------------------------------------ decoders (mirror the C kernels' walk)


def decode_int4(enc: Encoding, op: Op, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    rows = 1 if op is Op.DEPTHWISE_CONV2D else shape[0]
    k = n // rows if rows else 0
    packed = enc.arrays["weights"][:rows * -(-k // 2)].reshape(rows, -1).astype(np.int64)
    nib = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(rows, -1)[:, :k]
    return (nib - ((nib & 8) << 1)).astype(np.int8).reshape(shape)



def decode_bitmap(enc: Encoding, shape: tuple[int, int, int]) -> np.ndarray:
    rows, taps, length = shape
    nbytes = -(-length // 8)
    mask = np.unpackbits(enc.arrays["map"][:rows * taps * nbytes].reshape(rows, taps, nbytes), axis=-1,
                         bitorder="little")[..., :length].astype(bool)
    out = np.zeros(shape, np.int8)
    out[mask] = enc.arrays["values"][:int(mask.sum())]
    return out


def decode_index(enc: Encoding, shape: tuple[int, int, int]) -> np.ndarray:
    rows, taps, length = shape
    chunks = -(-length // SPARSE_CHUNK)
    counts = enc.arrays["map"][:rows * taps * chunks].astype(np.int64)
    out = np.zeros((rows * taps * chunks, SPARSE_CHUNK), np.int8)
    k = 0
    for chunk, n in enumerate(counts):
        out[chunk, enc.arrays["index"][k:k + n]] = enc.arrays["values"][k:k + n]
        k += n
    return out.reshape(rows, taps, chunks * SPARSE_CHUNK)[..., :length]


def decode_cluster(enc: Encoding, shape: tuple[int, ...]) -> np.ndarray:
    n, bits = int(np.prod(shape)), enc.bits
    stream = np.unpackbits(enc.arrays["indices"], bitorder="little")[:n * bits].reshape(n, bits).astype(np.uint32)
    idx = (stream << np.arange(bits, dtype=np.uint32)).sum(axis=1)
    return enc.arrays["codebook"][idx].reshape(shape)


# ------------------------------------------------------------------ the choice


def is_int4(g: Graph, node: Node) -> bool:
    """The layer's weights are quantised to 4 bits (passes/quantize.py: attrs weight_bits = 4)."""
    fmt = g.tensors[node.inputs[1]].qformat if len(node.inputs) > 1 else None
    return fmt is not None and fmt.bits == 4


def candidates(node: Node) -> tuple[str, ...]:
    request = node.attrs.get("weight_format", "dense")
    if request == "dense":
        return ()
    if node.attrs.get("groups", 1) != 1 or tuple(node.attrs.get("dilation", (1, 1))) != (1, 1):
        if request in FORCED:  # the sparse and clustered kernels walk plain (groups=1, dilation 1) windows
            raise UserError(f"{node.where()}: weight format '{request}' is not available for a grouped or "
                            "dilated convolution (groups > 1 or dilation > 1); its weights stay dense")
        return ()  # requested compression: such a layer keeps dense storage (the values may still be clustered)
    if request in FORCED:
        fmt = FORCED[request]
        ops = CLUSTER_OPS if fmt == "cluster" else SPARSE_OPS
        if node.op not in ops:
            raise UserError(f"{node.where()}: weight format '{request}' is not available for {node.op.value}; "
                            f"it supports {', '.join(o.value for o in ops)}")
        return (fmt,)
    if request not in REQUESTS:
        raise UserError(f"{node.where()}: unknown weight_format '{request}'; use dense, "
                        f"{', '.join(REQUESTS)} or {', '.join(FORCED)}")
    return tuple(f for f in REQUESTS[request]
                 if node.op in (CLUSTER_OPS if f == "cluster" else SPARSE_OPS))


def encode(fmt: str, op: Op, w: np.ndarray) -> Encoding:
    if fmt == "dense":
        return encode_dense(w)
    if fmt == "int4":
        return encode_int4(op, w)
    if fmt == "cluster":
        return encode_cluster(w)
    return (encode_bitmap if fmt == "bitmap" else encode_index)(segments(op, w))


def encoded_bytes(fmt: str, op: Op, w: np.ndarray) -> int:
    """Bytes of `encode(fmt, op, w)`, without encoding (tests/test_weight_formats.py checks they agree)."""
    if fmt == "dense":
        return int(w.size)
    if fmt == "int4":
        return int4_bytes(op, w.shape)
    if fmt == "cluster":
        distinct = len(np.unique(w))
        bits = max(1, math.ceil(math.log2(distinct))) if distinct else 1
        return -(-w.size * bits // 8) + 1 + (1 << bits)
    rows, taps, length = segments(op, w).shape
    nnz = max(int(np.count_nonzero(w)), 1)  # an empty stream is stored as one byte (_nonempty)
    if fmt == "bitmap":
        return rows * taps * -(-length // 8) + nnz
    return rows * taps * -(-length // SPARSE_CHUNK) + 2 * nnz


def storage_choice(g: Graph, node: Node) -> str:
    """How `node`'s weights are stored, and so which kernel runs it: "dense", "bitmap", "index" or "cluster".

    The one place this is decided: the memory planner (kernel_abi.scratch_bytes, overlap_distance) and the
    emitter (layer_parts) both read it, so the scratch planned is the scratch of the kernel called (a
    compressed encoding that would not be smaller falls back to the dense kernel, which needs scratch).
    Forced formats are taken as asked; otherwise the smallest requested encoding, dense on ties.
    4-bit weights are always "int4" (packed; assign_precision refuses int4 with a compression request).
    """
    if is_int4(g, node):
        return "int4"
    options = candidates(node)
    if not options:
        return "dense"
    if node.attrs.get("weight_format") in FORCED:
        return options[0]
    w = g.tensors[node.inputs[1]].data
    best, best_bytes = "dense", int(w.size)
    for fmt in options:
        size = encoded_bytes(fmt, node.op, w)
        if size < best_bytes:
            best, best_bytes = fmt, size
    return best


def choose(g: Graph, node: Node) -> Encoding:
    """The encoding of `node`'s weights in the C output (the format of storage_choice)."""
    return encode(storage_choice(g, node), node.op, g.tensors[node.inputs[1]].data)


# ------------------------------------------------------------------ emitter hook


# ------------------------------------------------------------------ what compression bought


def out_pixels(g: Graph, n: Node) -> int:
    out = g.tensors[n.outputs[0]].shape
    return int(np.prod(out[:-1])) if len(out) == 3 else 1


def layer_summary(g: Graph, n: Node) -> dict:
    """Per weighted layer of a quantised graph: chosen format, bytes (weights; + bias and shift), MACs."""
    w_t, b_t = g.tensors[n.inputs[1]], g.tensors[n.inputs[2]]
    enc = choose(g, n)
    dense_macs = SPEC[n.op].macs(g, n)  # the op's count (conv_transpose2d: only the taps landing on an output)
    executed = out_pixels(g, n) * enc.nonzero if enc.format in ("bitmap", "index") else dense_macs
    # dense_bytes: the int8 bytes of these weights; "bytes": as stored (int4: packed two per byte)
    other = b_t.nbytes + w_t.shape[0]  # int32 bias + int8 shift per output channel
    return {"name": n.name, "op": n.op.value, "format": enc.format, "bits": enc.bits, "shape": list(w_t.shape),
            "nonzero": enc.nonzero, "weights": w_t.size, "dense_bytes": w_t.size, "bytes": enc.nbytes,
            "dense_layer_bytes": w_t.size + other, "layer_bytes": enc.nbytes + other,
            "macs": dense_macs, "macs_executed": executed}


def summary(g: Graph) -> list[dict]:
    return [layer_summary(g, n) for n in g.nodes if has(n.op, Trait.WEIGHTED)]


def macs_executed(g: Graph) -> int:
    """Multiply-accumulates the kernels really execute (sparse kernels skip zero weights)."""
    return sum(s["macs_executed"] for s in summary(g))
