"""ONNX (opset 13-21) -> qgen IR: the same IR the PyTorch front end builds for the same model.

One handler per ONNX op type, looked up in a table. Activations are converted from ONNX's NCHW to
qgen's channels-last (H, W, C) exactly as in torch_export.py: conv weights (Cout, Cin, KH, KW) become
(Cout, KH, KW, Cin), a Gemm that reads a flattened image gets its columns permuted from C,H,W to
H,W,C order, BatchNormalization becomes a batch_norm node that fold_bn folds like PyTorch's.

Naming: a model exported by torch.onnx (dynamo exporter) carries the module path, the FX node name
and the stack trace of every node in its metadata; qgen reads them so that node names, source lines
and the banner's "Source model" are those of the PyTorch front end, and the generated C is
byte-identical. The TorchScript exporter's names ('/features/features.0/Conv') give the module path
('features.0'); any other ONNX node keeps its own name.

Small shape computations (Shape -> Gather -> Concat -> Reshape, CastLike of clip bounds) are folded
to constants while importing; the op handlers then see constant shapes and bounds.
"""
from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..ir import Graph, Node, Op, Tensor, verify
from . import onnx_cells, onnx_masks, onnx_recurrent
from .torch_export import LAYOUTS, ir_axis, ir_shape_of, reject_non_finite, source_of_trace

OPSETS = range(13, 22)  # default-domain opsets qgen reads
INSTALL_HINT = "install the ONNX extra: pip install 'qgen[onnx]' (or pip install onnx)"


def from_onnx_file(path: str | Path) -> Graph:
    """Load and lower an .onnx file (float) into qgen IR (float)."""
    try:
        import onnx
    except ImportError:
        raise UserError(f"reading '{path}' needs the `onnx` package; {INSTALL_HINT}") from None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file '{path}' does not exist")
    hint = "Export it with torch.onnx.export(model, (x,), 'model.onnx', dynamo=True)."
    if path.stat().st_size == 0:
        raise UserError(f"'{path}' is empty (0 bytes), not an ONNX model. {hint}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise UserError(f"cannot read '{path}' as an ONNX model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'not a protobuf'})") from None
    if not model.HasField("graph") and not model.opset_import:  # protobuf parses many byte strings as empty
        raise UserError(f"'{path}' is not an ONNX model (it holds no graph and no opset). {hint}")
    return from_onnx_model(model, source=path.name)


def from_onnx_model(model: Any, source: str = "") -> Graph:
    """Lower an onnx.ModelProto. `source` is used for banners unless the model names its PyTorch class."""
    graph = _Importer(model, source or (model.graph.name or "onnx model")).run()
    reject_non_finite(graph)
    verify(graph)
    return graph


# ---------------------------------------------------------------------------------- values


class _Act:
    """An activation: its IR tensor and the rank it has in ONNX (4: NCHW, 3: NCL, 2: NF). natural (rank 3 only):
    the IR holds ONNX (1, A, B) as (1, A, B), B innermost, instead of the convention (1, B, A) = (1, L, C) of an
    (N, C, L) sequence: a transformer's (1, L, D) tokens, where LayerNormalization, MatMul with a weight and
    Softmax work over the last ONNX axis. Only the handlers in NATURAL_OK read natural values; the importer
    gives every other handler the conventional layout (one TRANSPOSE, cached)."""

    def __init__(self, name: str, rank: int, natural: bool = False):
        self.name, self.rank, self.natural = name, rank, natural and rank == 3


VALUES = (_Act, onnx_recurrent._Seq)  # computed values (not constants to fold)


def torch_shape_of(ir_shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """Inverse of ir_shape_of: qgen (H, W, C) / (1, L, C) / (F,) -> ONNX (1, C, H, W) / (1, C, L) / (1, F)."""
    if rank == 4:
        return (1, ir_shape[2], ir_shape[0], ir_shape[1])
    if rank == 3:
        return (1, ir_shape[2], ir_shape[1])
    return (1, *ir_shape)


def _f32(value: float) -> float:
    """The shortest decimal that rounds to this float32 (ONNX float attributes are float32):
    1e-5 stays 1e-05 as in PyTorch, not 9.99999974738e-06, so folding computes the same doubles."""
    return float(str(np.float32(value)))


# ---------------------------------------------------------------------------------- importer


class _Importer:
    def __init__(self, model: Any, source: str):
        from onnx import numpy_helper

        self.model = model
        self.opset = self._check_opset(model)
        self.graph = Graph(tensors={}, nodes=[], inputs=[], outputs=[], source=source)
        self.values: dict[str, Any] = {}  # ONNX value name -> _Act or np.ndarray constant
        self.flat_from_image: dict[str, tuple[int, int, int]] = {}
        self.used_names: set[str] = set()
        self.skip: set[int] = set()  # node indices consumed by a pattern (sigmoid of x * sigmoid(x))
        self.silu: dict[int, str] = {}  # Mul node index -> the ONNX value x of x * sigmoid(x)
        # Add node index -> (first Reshape, InstanceNormalization, Mul) of torch.onnx's GroupNorm (find_patterns)
        self.group_norms: dict[int, tuple[Any, Any, Any]] = {}
        self.index = -1  # the node being lowered
        self.users: dict[str, list[Any]] = {}
        self.conventional: dict[str, _Act] = {}  # natural value's IR name -> its copy in the convention
        for init in model.graph.initializer:
            self.values[init.name] = numpy_helper.to_array(init)
        for node in model.graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)
        self.numpy_helper = numpy_helper

    @staticmethod
    def _check_opset(model) -> int:
        versions = {o.domain: o.version for o in model.opset_import}
        opset = versions.get("", versions.get("ai.onnx"))
        if opset is None:
            raise UserError("the ONNX model imports no default-domain opset; qgen reads opset 13-21")
        if opset not in OPSETS:
            raise UserError(f"the ONNX model uses opset {opset}; qgen reads opset 13-21. Re-export it with "
                            "torch.onnx.export(..., opset_version=18) or convert it with "
                            "onnx.version_converter.convert_version(model, 18).")
        return opset

    # -- helpers
    def meta(self, node) -> dict[str, str]:
        return {p.key: p.value for p in node.metadata_props}

    def names(self, node) -> tuple[str, str, str]:
        """(path, op-instance name, source) of a node, like the PyTorch front end's."""
        meta = self.meta(node)
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if scopes:
            try:
                parts = ast.literal_eval(scopes)
            except (ValueError, SyntaxError):
                parts = []
            if parts:
                path = parts[-2] if len(parts) > 2 else ""
                return path, parts[-1], source_of_trace(meta.get("pkg.torch.onnx.stack_trace", ""))
        if node.name.startswith("/"):  # TorchScript exporter: '/features/features.0/Conv'
            parts = node.name.strip("/").split("/")
            return (parts[-2] if len(parts) > 1 else ""), parts[-1], ""
        return "", node.name or f"{node.op_type}_{len(self.graph.nodes)}", ""

    def node_name(self, node) -> str:
        path, inst, _ = self.names(node)
        name = path or inst
        if name in self.used_names:
            name = f"{name}.{inst}" if path else name
        self.used_names.add(name)
        return name

    def base_name(self, node) -> str:
        """Base for tensor names: the FX node name when the exporter recorded it."""
        fx = self.meta(node).get("pkg.torch.onnx.fx_node", "")
        match = re.match(r"%(\w+) ", fx)
        if match:
            return match.group(1)
        return re.sub(r"[^A-Za-z0-9_]", "_", node.output[0]).strip("_") or "t"

    def where(self, node) -> str:
        return f"ONNX node '{node.name or '(unnamed)'}' ({node.op_type}, opset {self.opset})"

    def err(self, node, message: str) -> UserError:
        return UserError(f"{self.where(node)}: {message}")

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.graph.fresh_name(base)
        self.graph.tensors[name] = Tensor(name, tuple(array.shape), "float32", data=np.asarray(array, np.float64))
        return name

    def act(self, node, shape: tuple[int, ...], name: str | None = None) -> str:
        name = self.graph.fresh_name(name or self.base_name(node))
        self.graph.tensors[name] = Tensor(name, tuple(int(s) for s in shape))
        return name

    def add(self, node, op: Op, inputs: list[str], out_shape: tuple[int, ...], **attrs) -> str:
        out = self.act(node, out_shape)
        _, _, source = self.names(node)
        self.graph.nodes.append(Node(self.node_name(node), op, inputs, [out], attrs, source))
        return out

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.graph.tensors[name].shape

    def input_act(self, node, index: int = 0) -> _Act:
        value = self.values.get(node.input[index]) if index < len(node.input) else None
        if not isinstance(value, _Act):
            raise self.err(node, f"input {index} ('{node.input[index] if index < len(node.input) else ''}') "
                                 "must be a computed tensor; qgen does not compute on constants")
        return value

    def in_convention(self, node, x: _Act) -> _Act:
        """x in the conventional layout: a natural (1, A, B) value transposed to (1, B, A) once (cached)."""
        if not x.natural:
            return x
        if x.name not in self.conventional:
            _, a, b = self.shape_of(x.name)
            self.conventional[x.name] = _Act(self.add(node, Op.TRANSPOSE, [x.name], (1, b, a), perm=(0, 2, 1)), 3)
        return self.conventional[x.name]

    def in_natural(self, node, x: _Act) -> _Act:
        """A rank-3 x in the natural layout (ONNX (1, A, B) as IR (1, A, B)): a conventional one transposed."""
        if x.natural:
            return x
        _, b, a = self.shape_of(x.name)
        return _Act(self.add(node, Op.TRANSPOSE, [x.name], (1, a, b), perm=(0, 2, 1)), 3, natural=True)

    def input_const(self, node, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or node.input[index] == "":
            return None
        value = self.values.get(node.input[index])
        if isinstance(value, _Act) or value is None:
            raise self.err(node, f"{what} ('{node.input[index]}') must be a constant (initializer); qgen needs "
                                 "constant weights, shapes and bounds")
        return value

    def attr(self, node, name: str, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    # -- main loop
    def run(self) -> Graph:
        g = self.model.graph
        for meta_node in g.node:  # the PyTorch class, for banners (same as the PyTorch front end)
            hierarchy = self.meta(meta_node).get("pkg.torch.onnx.class_hierarchy")
            if hierarchy:
                try:
                    self.graph.source = ast.literal_eval(hierarchy)[0].rsplit(".", 1)[-1]
                except (ValueError, SyntaxError, IndexError):
                    pass
                break
        initializers = {i.name for i in g.initializer}
        for inp in g.input:
            if inp.name not in initializers:
                self.placeholder(inp)
        if not self.graph.inputs:
            raise UserError("the ONNX model has no tensor input")
        self.find_patterns()
        for index, node in enumerate(g.node):
            self.index = index
            if index in self.skip:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise self.unsupported(node, f"custom domain '{node.domain}'")
            inputs = [i for i in node.input if i][:1] if node.op_type in ("CastLike", "Shape") else node.input
            if node.op_type in CONST_FOLD and all(i in self.values and not isinstance(self.values[i], VALUES)
                                                  for i in inputs if i):
                outs = CONST_FOLD[node.op_type](self, node)
                for name, value in zip(node.output, outs):
                    self.values[name] = np.asarray(value)
                continue
            handler = onnx_recurrent.route(self, node, HANDLERS.get(node.op_type))  # sequences around GRU/LSTM/RNN
            if handler is None:
                hint = onnx_cells.unrolled_cell_hint(self, node)  # nn.LSTMCell in a loop: ONNX unrolls it
                raise UserError(hint) if hint else self.unsupported(node)
            natural = {} if node.op_type in NATURAL_OK else {
                i: v for i in node.input if isinstance(v := self.values.get(i), _Act) and v.natural}
            self.values.update({i: self.in_convention(node, v) for i, v in natural.items()})
            out = handler(self, node)
            self.values.update(natural)
            self.values[node.output[0]] = out
        for out in g.output:
            self.output(out)
        onnx_recurrent.finish(self.graph)
        return self.graph

    def unsupported(self, node, why: str = "") -> UserError:
        return UserError(f"{self.where(node)} is not supported{' (' + why + ')' if why else ''}. qgen reads "
                         f"{', '.join(sorted(HANDLERS))} (plus constant shape arithmetic). Replace the op in the "
                         "model (or export it differently) or open an issue.")

    def placeholder(self, value_info) -> None:
        if self.graph.inputs:
            raise UserError(f"the ONNX model has more than one input ('{self.graph.inputs[0]}', "
                            f"'{value_info.name}'); qgen compiles single-input models")
        dims = value_info.type.tensor_type.shape.dim
        shape = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif i == 0:
                shape.append(1)  # a symbolic batch dimension: qgen runs one sample at a time
            else:
                raise UserError(f"ONNX input '{value_info.name}' has a dynamic dimension '{d.dim_param}' at axis "
                                f"{i}; qgen compiles fixed shapes. Export with a fixed input shape.")
        if len(shape) not in (2, 3, 4) or shape[0] != 1:
            raise UserError(f"ONNX input '{value_info.name}' has shape {shape}; qgen supports (1, C, H, W) images, "
                            "(1, C, L) sequences and (1, F) vectors with batch size 1")
        name = self.graph.fresh_name(re.sub(r"[^A-Za-z0-9_]", "_", value_info.name) or "x")
        self.graph.inputs.append(name)
        if len(shape) == 3 and onnx_recurrent.wants_sequence(self, value_info.name):  # (1, T, F), time-major
            self.graph.tensors[name] = Tensor(name, tuple(shape))
            self.graph.io_layout[name] = "nlc"
            self.values[value_info.name] = onnx_recurrent.input_sequence(self, name, tuple(shape))
            return
        if len(shape) == 3 and _reads_tokens(self, value_info.name):  # (1, L, D) tokens: IR (1, L, D)
            self.graph.tensors[name] = Tensor(name, tuple(shape))
            self.graph.io_layout[name] = "nlc"
            self.values[value_info.name] = _Act(name, 3, natural=True)
            return
        self.graph.tensors[name] = Tensor(name, ir_shape_of(tuple(shape)))
        self.graph.io_layout[name] = LAYOUTS[len(shape)]
        self.values[value_info.name] = _Act(name, len(shape))

    def output(self, value_info) -> None:
        value = self.values.get(value_info.name)
        if isinstance(value, onnx_recurrent._Seq):  # a recurrent layer's output: (1, T, C) as it lies
            value = onnx_recurrent.output_value(self, value_info.name, value)
            if isinstance(value, str):
                return
        if not isinstance(value, _Act):
            raise UserError(f"ONNX output '{value_info.name}' is a constant; qgen compiles computed outputs only")
        if value.name in self.flat_from_image:
            h, w, c = self.flat_from_image[value.name]
            if h * w > 1 and c > 1:
                raise UserError(f"ONNX output '{value_info.name}' is a flattened {c}x{h}x{w} image; its element "
                                "order would differ from ONNX's. Return the 4-D tensor or end with a Gemm layer.")
        if value.name in self.graph.outputs:
            raise UserError(f"ONNX output '{value_info.name}' is listed twice")
        self.graph.outputs.append(value.name)
        self.graph.io_layout[value.name] = "nlc" if value.natural else LAYOUTS.get(value.rank, "nf")

    def find_patterns(self) -> None:
        """x * Sigmoid(x) (SiLU as exported) becomes one LUT: skip the Sigmoid, the Mul does it. torch.onnx's
        GroupNorm (Reshape to (1, G, -1), InstanceNormalization, Reshape back, Mul gamma, Add beta) becomes one
        group_norm: skip the first four, the Add does it (_group_norm_pattern)."""
        nodes = list(self.model.graph.node)
        producer = {out: (i, n) for i, n in enumerate(nodes) for out in n.output}
        index_of = {id(n): i for i, n in enumerate(nodes)}

        def only_user(value: str, op_type: str):
            users = self.users.get(value, [])
            return users[0] if len(users) == 1 and users[0].op_type == op_type else None

        for inst in nodes:
            if inst.op_type != "InstanceNormalization":
                continue
            _, first = producer.get(inst.input[0], (None, None))
            back = only_user(inst.output[0], "Reshape")
            mul = only_user(back.output[0], "Mul") if back is not None else None
            add = only_user(mul.output[0], "Add") if mul is not None else None
            if first is None or first.op_type != "Reshape" or add is None or \
                    len(self.users.get(first.output[0], [])) != 1 or back.input[0] != inst.output[0]:
                continue
            self.skip.update(index_of[id(n)] for n in (first, inst, back, mul))
            self.group_norms[index_of[id(add)]] = (first, inst, mul)
        for mul_index, node in enumerate(nodes):
            if node.op_type != "Mul" or len(node.input) != 2:
                continue
            for a, b in (node.input, node.input[::-1]):
                index, sig = producer.get(b, (None, None))
                if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == a and \
                        len(self.users.get(b, [])) == 1:
                    self.skip.add(index)
                    self.silu[mul_index] = a
                    break


# ---------------------------------------------------------------------------------- constant folding


def _np_cast(imp: _Importer, node) -> list:
    from onnx import helper

    x = imp.values[node.input[0]]
    if node.op_type == "CastLike":  # like an activation: float32
        like = imp.values[node.input[1]]
        return [np.asarray(x).astype(np.float32 if isinstance(like, _Act) else like.dtype)]
    return [np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(imp.attr(node, "to")))]


def _np_constant(imp: _Importer, node) -> list:
    for a in node.attribute:
        if a.name == "value":
            return [imp.numpy_helper.to_array(a.t)]
        if a.name in ("value_float", "value_int"):
            return [np.asarray(imp.attr(node, a.name))]
        if a.name in ("value_floats", "value_ints"):
            return [np.asarray(list(imp.attr(node, a.name)))]
    raise imp.unsupported(node, "a Constant without a tensor, float or int value")


def _axes(imp: _Importer, node, index: int = 1):
    axes = imp.attr(node, "axes")
    if axes is None and len(node.input) > index and node.input[index]:
        axes = [int(a) for a in np.asarray(imp.values[node.input[index]]).reshape(-1)]
    return axes


def _np_unsqueeze(imp: _Importer, node) -> list:
    x = np.asarray(imp.values[node.input[0]])
    for a in sorted(int(a) % (x.ndim + len(_axes(imp, node))) for a in _axes(imp, node)):
        x = np.expand_dims(x, a)
    return [x]


def _np_squeeze(imp: _Importer, node) -> list:
    x = np.asarray(imp.values[node.input[0]])
    axes = _axes(imp, node)
    return [np.squeeze(x, axis=tuple(int(a) for a in axes) if axes else None)]


def _np_gather(imp: _Importer, node) -> list:
    x, idx = np.asarray(imp.values[node.input[0]]), np.asarray(imp.values[node.input[1]])
    return [np.take(x, idx, axis=int(imp.attr(node, "axis", 0)))]


def _np_concat(imp: _Importer, node) -> list:
    return [np.concatenate([np.atleast_1d(imp.values[i]) for i in node.input], axis=int(imp.attr(node, "axis")))]


def _np_binary(fn: Callable) -> Callable:
    return lambda imp, node: [fn(np.asarray(imp.values[node.input[0]]), np.asarray(imp.values[node.input[1]]))]


def _np_slice(imp: _Importer, node) -> list:
    x = np.asarray(imp.values[node.input[0]])
    get = lambda i: None if len(node.input) <= i or not node.input[i] else \
        [int(v) for v in np.asarray(imp.values[node.input[i]]).reshape(-1)]
    starts, ends, axes, steps = get(1), get(2), get(3), get(4)
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s0, e, st in zip(axes, starts, ends, steps):
        index[a] = slice(s0, e, st)
    return [x[tuple(index)]]


def _np_expand(imp: _Importer, node) -> list:
    """Expand of a constant (torch.onnx's zero initial state of a recurrent layer, broadcast to its batch)."""
    x = np.asarray(imp.values[node.input[0]])
    return [x * np.ones([int(v) for v in np.asarray(imp.values[node.input[1]]).reshape(-1)], dtype=x.dtype)]


def _np_constant_of_shape(imp: _Importer, node) -> list:
    value = next((imp.numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1, np.float32))
    shape = [int(v) for v in np.asarray(imp.values[node.input[0]]).reshape(-1)]
    return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


CONST_FOLD: dict[str, Callable[[_Importer, Any], list]] = {
    "Constant": _np_constant,
    "Shape": lambda imp, node: [np.array(np.asarray(imp.values[node.input[0]]).shape, np.int64)
                                [imp.attr(node, "start", 0):imp.attr(node, "end")]],
    "ConstantOfShape": _np_constant_of_shape,
    "Slice": _np_slice,
    "Transpose": lambda imp, node: [np.transpose(np.asarray(imp.values[node.input[0]]), imp.attr(node, "perm"))],
    "Reshape": lambda imp, node: [np.asarray(imp.values[node.input[0]]).reshape(
        [int(v) for v in np.asarray(imp.values[node.input[1]]).reshape(-1)])],
    "Identity": lambda imp, node: [imp.values[node.input[0]]],
    "Cast": _np_cast,
    "CastLike": _np_cast,
    "Unsqueeze": _np_unsqueeze,
    "Squeeze": _np_squeeze,
    "Gather": _np_gather,
    "Concat": _np_concat,
    "Expand": _np_expand,
    "Mul": _np_binary(np.multiply),
    "Add": _np_binary(np.add),
    "Sub": _np_binary(np.subtract),
    "Div": _np_binary(lambda a, b: a // b if a.dtype.kind in "iu" and b.dtype.kind in "iu" else a / b),
    "Equal": _np_binary(np.equal),  # with Where: torch.onnx's expand(B, -1, -1) of a constant (a cls token)
    "Where": lambda imp, node: [np.where(*(np.asarray(imp.values[i]) for i in node.input))],
}


# ---------------------------------------------------------------------------------- op handlers


def _conv(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    w = np.asarray(imp.input_const(node, 1, "the weight"), np.float64)
    b = imp.input_const(node, 2, "the bias")
    dilations = [int(d) for d in imp.attr(node, "dilations") or [1] * (w.ndim - 2)]
    strides = list(imp.attr(node, "strides") or [1] * (w.ndim - 2))
    pads = list(imp.attr(node, "pads") or [0] * (2 * (w.ndim - 2)))
    if x.rank == 3:  # Conv1d: a 1 x K image kernel, as the PyTorch front end lowers it
        if w.ndim != 3:
            raise imp.err(node, f"weight of shape {list(w.shape)} on a 3-D input")
        w = w[:, :, None, :]
        strides, pads, dilations = [1, strides[0]], [0, pads[0], 0, pads[1]], [1, dilations[0]]
    elif x.rank != 4 or w.ndim != 4:
        raise imp.err(node, f"convolution of a {x.rank}-D input; qgen supports 1-D and 2-D convolutions")
    h, wd, cin = imp.shape_of(x.name)
    cout, _, kh, kw = w.shape
    auto_pad = imp.attr(node, "auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads((h, wd), ((kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1), strides,
                          auto_pad == "SAME_UPPER")
    top, left, bottom, right = int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])
    group = int(imp.attr(node, "group", 1))
    dh, dw = dilations
    attrs = {"dilation": (dh, dw)} if (dh, dw) != (1, 1) else {}
    if group == 1:
        op = Op.CONV2D
    elif group == cin and w.shape[1] == 1:
        op = Op.DEPTHWISE_CONV2D
    elif group > 1 and cin % group == 0 and cout % group == 0:
        op, attrs["groups"] = Op.CONV2D, group
    else:
        raise imp.err(node, f"group={group} with {cin} input and {cout} output channels; qgen supports groups "
                            "that divide both (depthwise: group=in_channels)")
    bias = np.asarray(b, np.float64) if b is not None else np.zeros(cout)
    oh = (h + top + bottom - dh * (kh - 1) - 1) // int(strides[0]) + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // int(strides[1]) + 1
    base = imp.base_name(node)
    wname, bname = imp.const(f"{base}_w", w.transpose(0, 2, 3, 1)), imp.const(f"{base}_b", bias)
    out = imp.add(node, op, [x.name, wname, bname], (oh, ow, cout), stride=(int(strides[0]), int(strides[1])),
                  padding=(top, left, bottom, right), **attrs)
    return _Act(out, x.rank)


def _same_pads(size, kernel, strides, upper: bool) -> list[int]:
    pads = []
    for n, k, s in zip(size, kernel, strides):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        lo = total // 2 if upper else total - total // 2
        pads.append((lo, total - lo))
    return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]


def _gemm(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    w = np.asarray(imp.input_const(node, 1, "the weight (B)"), np.float64)
    c = imp.input_const(node, 2, "the bias (C)")
    if int(imp.attr(node, "transA", 0)):
        raise imp.err(node, "transA=1 is not supported")
    if not int(imp.attr(node, "transB", 0)):
        w = w.T
    alpha, beta = _f32(imp.attr(node, "alpha", 1.0)), _f32(imp.attr(node, "beta", 1.0))
    if alpha != 1.0:
        w = w * alpha
    bias = np.zeros(w.shape[0]) if c is None else np.broadcast_to(np.asarray(c, np.float64) * beta, (w.shape[0],))
    return _linear_core(imp, node, x, w, np.array(bias))


def _matmul(imp: _Importer, node) -> _Act:
    if isinstance(imp.values.get(node.input[1]), _Act):
        return _matmul_activations(imp, node)
    x = imp.input_act(node)
    w = np.asarray(imp.input_const(node, 1, "the second operand"), np.float64)
    if w.ndim != 2:
        raise imp.err(node, f"MatMul with a {w.ndim}-D constant; qgen supports x @ W with a 2-D W")
    if x.rank == 3:
        return _linear_tokens(imp, node, x, w)
    x = imp.in_convention(node, x)
    return _linear_core(imp, node, x, w.T, np.zeros(w.shape[1]))


def _linear_tokens(imp: _Importer, node, x: _Act, w: np.ndarray) -> _Act:
    """(1, L, D) @ W (D, O) [+ b (O,), the exporter's Add, folded]: a 1x1 CONV2D over the L tokens as pixels, D
    innermost (the natural layout; a conventional input is transposed once). The result is natural (1, L, O)."""
    x = imp.in_natural(node, x)
    _, length, d = imp.shape_of(x.name)
    if w.shape[0] != d:
        raise imp.err(node, f"MatMul of a (1, {length}, {d}) activation with a {list(w.shape)} weight; the weight "
                            f"must have {d} rows")
    bias, users = np.zeros(w.shape[1]), imp.users.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Add":  # the Linear's bias
        add = users[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        b = imp.values.get(other)
        if b is not None and not isinstance(b, VALUES) and np.asarray(b).size == w.shape[1] and \
                np.asarray(b).shape[-1:] == (w.shape[1],):
            bias = np.asarray(b, np.float64).reshape(-1)
            imp.skip.add(list(imp.model.graph.node).index(add))
        else:
            add = None
    else:
        add = None
    base = imp.base_name(node)
    wname, bname = imp.const(f"{base}_w", w.T[:, None, None, :]), imp.const(f"{base}_b", bias)
    out = _Act(imp.add(node, Op.CONV2D, [x.name, wname, bname], (1, length, w.shape[1]), stride=(1, 1),
                       padding=(0, 0, 0, 0)), 3, natural=True)
    if add is not None:
        imp.values[add.output[0]] = out
    return out


def _linear_core(imp: _Importer, node, x: _Act, w: np.ndarray, bias: np.ndarray) -> _Act:
    shape = imp.shape_of(x.name)
    if len(shape) != 1:
        raise imp.err(node, f"Gemm/MatMul on a {len(shape)}-D input {list(shape)}; flatten first "
                            "(qgen supports it on (1, F) inputs)")
    if w.shape[1] != shape[0]:
        raise imp.err(node, f"weight {list(w.shape)} does not match the input's {shape[0]} features")
    if x.name in imp.flat_from_image:  # ONNX flattened C,H,W; qgen flattened H,W,C: permute columns
        h, wd, c = imp.flat_from_image[x.name]
        w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    base = imp.base_name(node)
    wname, bname = imp.const(f"{base}_w", w), imp.const(f"{base}_b", bias)
    return _Act(imp.add(node, Op.LINEAR, [x.name, wname, bname], (w.shape[0],)), 2)


def _batch_norm(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    if int(imp.attr(node, "training_mode", 0)) or len(node.output) > 1 and any(node.output[1:]):
        raise imp.err(node, "batch norm in training mode; export the model after model.eval()")
    gamma, beta, mean, var = (np.asarray(imp.input_const(node, i, what), np.float64)
                              for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    eps = _f32(imp.attr(node, "epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    base = imp.base_name(node)
    sname, tname = imp.const(f"{base}_scale", scale), imp.const(f"{base}_shift", shift)
    return _Act(imp.add(node, Op.BATCH_NORM, [x.name, sname, tname], imp.shape_of(x.name)), x.rank)


def _layer_norm(imp: _Importer, node) -> _Act:
    """LayerNormalization over ONNX axes [axis, rank): they must be qgen's innermost IR axes (as in PyTorch)."""
    x = imp.input_act(node)
    axis = int(imp.attr(node, "axis", -1)) % x.rank
    if x.rank == 3 and axis == 2:  # the last axis of (1, L, D) tokens: innermost in the natural layout
        x = imp.in_natural(node, x)
    elif x.natural:
        x = imp.in_convention(node, x)
    rank, ir = x.rank, imp.shape_of(x.name)
    if x.natural:
        d = ir[2]
        gamma = np.asarray(imp.input_const(node, 1, "Scale"), np.float64).reshape(-1)
        beta = imp.input_const(node, 2, "B")
        beta = np.zeros(d) if beta is None else np.asarray(beta, np.float64).reshape(-1)
        base = imp.base_name(node)
        gname, bname = imp.const(f"{base}_gamma", gamma), imp.const(f"{base}_beta", beta)
        eps = _f32(imp.attr(node, "epsilon", 1e-5))
        return _Act(imp.add(node, Op.LAYER_NORM, [x.name, gname, bname], ir, axes=1, eps=eps), 3, natural=True)
    dims = list(range(axis, rank))
    axes = [ir_axis(d, rank) for d in dims] if rank > 2 else [0]
    if axis == 0 or sorted(axes) != list(range(len(ir) - len(axes), len(ir))) or len(set(axes)) != len(axes):
        raise imp.err(node, f"LayerNormalization over axes {dims} (rank {rank}), which qgen holds as IR axes "
                            f"{axes} of {list(ir)}, not its innermost ones; qgen normalises the features of (N, F), "
                            "all of (N, C, L) / (N, C, H, W), or the channels of a channels-last tensor")
    torch_norm_shape = tuple(torch_shape_of(ir, rank)[axis:]) if rank > 2 else ir
    gamma = np.asarray(imp.input_const(node, 1, "Scale"), np.float64).reshape(torch_norm_shape)
    beta = imp.input_const(node, 2, "B")
    beta = np.zeros(torch_norm_shape) if beta is None else np.asarray(beta, np.float64).reshape(torch_norm_shape)
    perm = np.argsort(axes)
    gamma, beta = gamma.transpose(perm).reshape(-1), beta.transpose(perm).reshape(-1)
    if x.name in imp.flat_from_image:  # ONNX flattened C,H,W; qgen holds H,W,C
        h, w, c = imp.flat_from_image[x.name]
        order = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
        gamma, beta = gamma[order], beta[order]
    base = imp.base_name(node)
    gname, bname = imp.const(f"{base}_gamma", gamma), imp.const(f"{base}_beta", beta)
    eps = _f32(imp.attr(node, "epsilon", 1e-5))
    return _Act(imp.add(node, Op.LAYER_NORM, [x.name, gname, bname], ir, axes=len(axes), eps=eps), x.rank)


def _group_norm(imp: _Importer, node) -> _Act:
    """GroupNormalization (scale/bias per group in opset 18, per channel in 21) and InstanceNormalization
    (groups = channels): statistics over H*W*C/G per group, channels innermost in qgen."""
    x = imp.input_act(node)
    if x.name in imp.flat_from_image:
        raise imp.err(node, f"{node.op_type} of a flattened image; apply it before flattening")
    c = imp.shape_of(x.name)[-1]
    groups = c if node.op_type == "InstanceNormalization" else int(imp.attr(node, "num_groups", 1))
    if groups < 1 or c % groups:
        raise imp.err(node, f"{groups} groups over {c} channels; the groups must divide the channels")
    gamma = np.asarray(imp.input_const(node, 1, "scale"), np.float64).reshape(-1)
    beta = np.asarray(imp.input_const(node, 2, "B"), np.float64).reshape(-1)
    if gamma.size == groups and groups != c:  # opset 18: one scale and bias per group
        gamma, beta = np.repeat(gamma, c // groups), np.repeat(beta, c // groups)
    base = imp.base_name(node)
    gname, bname = imp.const(f"{base}_gamma", gamma), imp.const(f"{base}_beta", beta)
    eps = _f32(imp.attr(node, "epsilon", 1e-5))
    return _Act(imp.add(node, Op.GROUP_NORM, [x.name, gname, bname], imp.shape_of(x.name), groups=groups, eps=eps),
                x.rank)


def _group_norm_pattern(imp: _Importer, add) -> _Act:
    """torch.onnx's GroupNorm: Reshape(x, (1, G, -1)) -> InstanceNormalization(s, b) -> Reshape back -> Mul(gamma)
    -> Add(beta) is one group_norm with gamma'[c] = s[g] * gamma[c], beta'[c] = b[g] * gamma[c] + beta[c]."""
    first, inst, mul = imp.group_norms[imp.index]
    x = imp.values.get(first.input[0])
    if not isinstance(x, _Act) or x.name in imp.flat_from_image:
        raise imp.err(first, "GroupNorm (Reshape, InstanceNormalization) of a constant or a flattened image")
    c = imp.shape_of(x.name)[-1]
    s = np.asarray(imp.input_const(inst, 1, "scale"), np.float64).reshape(-1)
    b = np.asarray(imp.input_const(inst, 2, "B"), np.float64).reshape(-1)
    groups = s.size
    target = imp.values.get(first.input[1])
    if groups < 1 or c % groups or not isinstance(target, np.ndarray) or target.size != 3 or \
            int(target.reshape(-1)[1]) != groups:
        raise imp.err(first, f"Reshape to {None if target is None else np.asarray(target).tolist()} before "
                             f"InstanceNormalization over {c} channels is not a GroupNorm qgen recognises")
    consts = []
    for n in (mul, add):  # the activation input of each was skipped (no value): the other one is the constant
        value = [v for v in (imp.values.get(i) for i in n.input) if isinstance(v, np.ndarray)]
        if len(value) != 1 or np.asarray(value[0]).size not in (1, c):
            raise imp.err(n, f"GroupNorm's {n.op_type} needs a constant per channel")
        consts.append(np.broadcast_to(np.asarray(value[0], np.float64).reshape(-1), (c,)))
    gamma, beta = consts
    s, b = np.repeat(s, c // groups), np.repeat(b, c // groups)
    base = imp.base_name(add)
    gname = imp.const(f"{base}_gamma", s * gamma)
    bname = imp.const(f"{base}_beta", b * gamma + beta)
    eps = _f32(imp.attr(inst, "epsilon", 1e-5))
    return _Act(imp.add(add, Op.GROUP_NORM, [x.name, gname, bname], imp.shape_of(x.name), groups=groups, eps=eps),
                x.rank)


def _relu(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    return _Act(imp.add(node, Op.RELU, [x.name], imp.shape_of(x.name), lo=0.0, hi=None), x.rank)


def _clip(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    if imp.opset < 11 or imp.attr(node, "min") is not None:  # pragma: no cover - opset 13+ uses inputs
        lo, hi = imp.attr(node, "min"), imp.attr(node, "max")
    else:
        lo, hi = imp.input_const(node, 1, "min"), imp.input_const(node, 2, "max")
    lo = None if lo is None else _f32(float(np.asarray(lo).reshape(-1)[0]))
    hi = None if hi is None else _f32(float(np.asarray(hi).reshape(-1)[0]))
    return _Act(imp.add(node, Op.RELU, [x.name], imp.shape_of(x.name), lo=lo, hi=hi), x.rank)


def _pool(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    if x.rank not in (3, 4):
        raise imp.err(node, f"pooling of a {x.rank}-D input")
    if imp.attr(node, "dilations") is not None and any(d != 1 for d in imp.attr(node, "dilations")):
        raise imp.err(node, "dilation is not supported for pooling")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        raise imp.err(node, "the Indices output of MaxPool is not supported")
    kernel = list(imp.attr(node, "kernel_shape"))
    strides = list(imp.attr(node, "strides") or [1] * len(kernel))
    pads = list(imp.attr(node, "pads") or [0] * (2 * len(kernel)))
    if x.rank == 3:
        kernel, strides, pads = [1, kernel[0]], [1, strides[0]], [0, pads[0], 0, pads[1]]
    h, w, c = imp.shape_of(x.name)
    if imp.attr(node, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads((h, w), kernel, strides, imp.attr(node, "auto_pad") == "SAME_UPPER")
    pads = [int(p) for p in pads]
    if any(p >= k for p, k in zip(pads, kernel + kernel)):
        raise imp.err(node, f"pads {pads} reach a whole kernel {kernel}: a window would read only padding")
    count_pad = tuple(pads) if int(imp.attr(node, "count_include_pad", 0)) else (0, 0, 0, 0)
    out = []
    for axis, size in ((0, h), (1, w)):  # ceil_mode: PyTorch's rule, the last window starts before the end pad
        k, s, lo, hi = int(kernel[axis]), int(strides[axis]), pads[axis], pads[axis + 2]
        n = (size + lo + hi - k + (s - 1 if int(imp.attr(node, "ceil_mode", 0)) else 0)) // s + 1
        if (n - 1) * s >= size + lo:
            n -= 1
        out.append(n)
        pads[axis + 2] = max(hi, (n - 1) * s + k - size - lo)  # the clipped part of the last windows
    avg = node.op_type == "AveragePool"
    attrs = {"kernel": (int(kernel[0]), int(kernel[1])), "stride": (int(strides[0]), int(strides[1])),
             "padding": tuple(pads)}
    if avg and count_pad != attrs["padding"]:
        attrs["count_pad"] = count_pad
    return _Act(imp.add(node, Op.AVGPOOL2D if avg else Op.MAXPOOL2D, [x.name], (out[0], out[1], c), **attrs),
                x.rank)


def _global_pool(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    if x.rank not in (3, 4):
        raise imp.err(node, f"global pooling of a {x.rank}-D input; qgen supports (1, C, H, W) and (1, C, L)")
    h, w, c = imp.shape_of(x.name)
    op = Op.MAXPOOL2D if node.op_type == "GlobalMaxPool" else Op.AVGPOOL2D
    return _Act(imp.add(node, op, [x.name], (1, 1, c), kernel=(h, w), stride=(h, w), padding=(0, 0, 0, 0)), x.rank)


def _torch_order(ir_shape: tuple[int, ...], rank: int) -> np.ndarray:
    """PyTorch's flat index of each element of an IR tensor of `ir_shape` holding a rank-`rank` tensor."""
    if len(ir_shape) == 1:
        return np.arange(ir_shape[0])
    h, w, c = ir_shape
    if rank == 3:  # (1, C, L) as (1, L, C)
        return np.arange(c * w).reshape(c, w).T.reshape(-1)
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def _reduce(imp: _Importer, node) -> _Act:
    """ReduceMean / ReduceMax over any axes but the batch: pooling over H and/or W, REDUCE over channels;
    ReduceSum over the channels (REDUCE kind sum: one rounding)."""
    x = imp.input_act(node)
    axes = _axes(imp, node)
    keepdims = int(imp.attr(node, "keepdims", 1))
    axes = sorted({int(a) % x.rank for a in axes} if axes else set(range(x.rank)))
    if 0 in axes and not keepdims:
        raise imp.err(node, f"{node.op_type} over axes {axes} drops the batch axis; set keepdims=1")
    axes = [a for a in axes if a != 0]  # the batch is 1: reducing it changes nothing
    kind = {"ReduceMean": "mean", "ReduceSum": "sum"}.get(node.op_type, "max")
    ir_axes = {ir_axis(a, x.rank) for a in axes} if x.rank > 2 else {0}
    shape = imp.shape_of(x.name)
    if kind == "sum" and ir_axes - {len(shape) - 1}:
        raise imp.err(node, f"ReduceSum over axes {axes}; qgen's ONNX front end sums over the channels (axis 1) "
                            "only. Sum over the channels, or export from PyTorch (torch.sum over any dims)")
    out = x.name
    if len(shape) == 3 and ir_axes & {0, 1}:
        h, w, c = shape
        kh, kw = (h if 0 in ir_axes else 1), (w if 1 in ir_axes else 1)
        if kh * kw > 1:
            op = Op.AVGPOOL2D if kind == "mean" else Op.MAXPOOL2D
            out = imp.add(node, op, [out], (h // kh, w // kw, c), kernel=(kh, kw), stride=(kh, kw),
                          padding=(0, 0, 0, 0))
    if len(shape) - 1 in ir_axes and shape[-1] > 1:
        out = imp.add(node, Op.REDUCE, [out], imp.shape_of(out)[:-1] + (1,), kind=kind)
    if keepdims:
        return _Act(out, x.rank)
    onnx_shape = tuple(s for d, s in enumerate(torch_shape_of(shape, x.rank)) if d not in axes)
    if len(onnx_shape) < 2:
        raise imp.err(node, f"{node.op_type} over axes {axes} without keepdims leaves a {len(onnx_shape)}-D tensor; "
                            "qgen's tensors keep the batch and one more axis: set keepdims=1")
    target = ir_shape_of(onnx_shape)
    if imp.shape_of(out) == target:
        return _Act(out, len(onnx_shape))
    if not np.array_equal(_torch_order(imp.shape_of(out), x.rank), _torch_order(target, len(onnx_shape))):
        raise imp.err(node, f"{node.op_type} over axes {axes} without keepdims leaves a tensor whose elements lie "
                            "transposed in qgen's layout; set keepdims=1")
    if len(target) == 1:
        return _reshape_to(imp, node, _Act(out, x.rank), target)
    return _Act(imp.add(node, Op.RESHAPE, [out], target, shape=target), len(onnx_shape))


def _reshape_to(imp: _Importer, node, x: _Act, shape: tuple[int, ...]) -> _Act:
    src = imp.shape_of(x.name)
    out = imp.add(node, Op.RESHAPE, [x.name], shape, shape=shape)
    if len(src) == 3:
        imp.flat_from_image[out] = src
    elif x.name in imp.flat_from_image:
        imp.flat_from_image[out] = imp.flat_from_image[x.name]
    return _Act(out, 2)


def _flatten_to(imp: _Importer, node, x: _Act, onnx_shape: tuple[int, ...]) -> _Act:
    """View/flatten: only to (1, F), or a no-op view back to the same image (as the PyTorch front end)."""
    src = imp.shape_of(x.name)
    size = math.prod(src)
    if len(onnx_shape) in (3, 4) and onnx_shape[0] == 1:
        if ir_shape_of(onnx_shape) == src and len(onnx_shape) == x.rank:
            return x
        raise imp.err(node, f"reshape {list(torch_shape_of(src, x.rank))} -> {list(onnx_shape)}; qgen supports "
                            "flattening to (1, F)")
    if len(onnx_shape) != 2 or onnx_shape[0] != 1 or onnx_shape[1] != size:
        raise imp.err(node, f"reshape to {list(onnx_shape)}; qgen supports flattening to (1, F)")
    if src == (size,):
        return x
    return _reshape_to(imp, node, x, (size,))


def _reshape(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    target = [int(s) for s in np.asarray(imp.input_const(node, 1, "the shape")).reshape(-1)]
    src = torch_shape_of(imp.shape_of(x.name), x.rank)
    allowzero = int(imp.attr(node, "allowzero", 0))
    shape = [src[i] if s == 0 and not allowzero and i < len(src) else s for i, s in enumerate(target)]
    if shape.count(-1) > 1:
        raise imp.err(node, f"reshape to {target} with more than one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = math.prod(src) // max(known, 1)
    shuffled = _channel_shuffle(imp, node, x, shape)
    if shuffled is not None:
        return shuffled
    return _flatten_to(imp, node, x, tuple(shape))


def _flatten(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    axis = int(imp.attr(node, "axis", 1)) % x.rank
    src = torch_shape_of(imp.shape_of(x.name), x.rank)
    return _flatten_to(imp, node, x, (math.prod(src[:axis]), math.prod(src[axis:])))


def _add(imp: _Importer, node) -> _Act:
    if imp.index in imp.group_norms:
        return _group_norm_pattern(imp, node)
    a, b = (imp.values.get(i) for i in node.input)
    masked = onnx_masks.additive(imp, node, a, b)  # scores + a 0/-inf mask before Softmax
    if masked is not None:
        return masked
    ka, kb = _scalar(a), _scalar(b)
    if isinstance(a, _Act) and kb is not None:
        return _affine(imp, node, a, 1.0, kb)
    if isinstance(b, _Act) and ka is not None:
        return _affine(imp, node, b, 1.0, ka)
    if isinstance(a, _Act) != isinstance(b, _Act) and (a if isinstance(b, _Act) else b) is not None:
        return _with_const(imp, node, Op.ADD, a, b)  # x + C: a positional embedding, a (1, C, H, W) bias
    if not (isinstance(a, _Act) and isinstance(b, _Act)):
        raise imp.err(node, "add of a constant; qgen supports adding two activations (residual add). "
                            "Fold the constant into a bias.")
    if a.natural != b.natural:  # one layout for both: the natural one if either is (tokens stay tokens)
        a, b = imp.in_natural(node, a), imp.in_natural(node, b)
    if imp.shape_of(a.name) != imp.shape_of(b.name) or a.rank != b.rank:  # broadcasting
        return _two_activations(imp, node, Op.ADD)
    return _Act(imp.add(node, Op.ADD, [a.name, b.name], imp.shape_of(a.name)), a.rank, a.natural)


def _mul(imp: _Importer, node) -> _Act:
    if imp.index in imp.silu:
        x = imp.values[imp.silu[imp.index]]
        return _Act(imp.add(node, Op.LUT, [x.name], imp.shape_of(x.name), fn="silu"), x.rank)
    a, b = (imp.values.get(i) for i in node.input)
    x, k = (a, b) if isinstance(a, _Act) else (b, a)
    if isinstance(x, _Act) and k is not None and not isinstance(k, _Act) and np.all(np.asarray(k) == 1):
        return x  # x * 1 (left by exporters around Elu): nothing to compute
    if isinstance(x, _Act) and _scalar(k) is not None:
        return _affine(imp, node, x, _scalar(k), 0.0)
    return _two_activations(imp, node, Op.MUL)


# -- arithmetic (codegen/ops/eltwise.py): two activations -> mul/sub/maximum/minimum; an activation and a
# one-element constant -> affine x * scale + offset


def _scalar(value) -> float | None:
    """The value of a one-element constant (ONNX float32, read as the PyTorch front end reads it); else None."""
    if value is None or isinstance(value, _Act) or np.asarray(value).size != 1:
        return None
    return _f32(float(np.asarray(value).reshape(-1)[0]))


def _affine(imp: _Importer, node, x: _Act, scale: float, offset: float) -> _Act:
    """x * scale + offset, element-wise: in whatever layout x has."""
    return _Act(imp.add(node, Op.AFFINE, [x.name], imp.shape_of(x.name), scale=float(scale), offset=float(offset)),
                x.rank, x.natural)


def _two_activations(imp: _Importer, node, op: Op) -> _Act:
    from ..ops.eltwise import COMMUTATIVE, bcast_plan, broadcasts

    a, b = (imp.values.get(i) for i in node.input)
    if isinstance(a, _Act) != isinstance(b, _Act) and (a if isinstance(b, _Act) else b) is not None:
        return _with_const(imp, node, op, a, b)  # x - C, C * x: a const operand
    if isinstance(a, _Act) and isinstance(b, _Act) and (a.natural or b.natural):  # binary ops read the convention
        a, b = imp.in_convention(node, a), imp.in_convention(node, b)
    if not (isinstance(a, _Act) and isinstance(b, _Act)):
        raise imp.err(node, f"{op.value} with a constant tensor of more than one element; qgen supports {op.value} "
                            "of two activations or of an activation and a scalar. Fold the constant into a "
                            "neighbouring layer's weights.")
    sa, sb = imp.shape_of(a.name), imp.shape_of(b.name)
    if op is Op.MUL and broadcasts(sb, sa):  # gate * x: the full-size operand first
        a, b, sa, sb = b, a, sb, sa
    out = tuple(max(x, y) for x, y in zip(sa, sb))
    if op in COMMUTATIVE and sb == out != sa:  # the full operand first
        a, b, sa, sb = b, a, sb, sa
    if (sa != sb or a.rank != b.rank) and (a.rank != b.rank or bcast_plan(sa, sb) is None):
        raise imp.err(node, f"{op.value} of shapes {list(torch_shape_of(sa, a.rank))} and "
                            f"{list(torch_shape_of(sb, b.rank))}; qgen supports equal shapes or NumPy broadcasting "
                            "between operands of the same rank (each dim equal or 1)")
    return _Act(imp.add(node, op, [a.name, b.name], out if len(sa) == len(sb) else sa), a.rank)


def _const_node(imp: _Importer, node, data: np.ndarray) -> str:
    """A CONST node (codegen/ops/const.py) holding `data` (IR shape and order) as an activation."""
    out = imp.act(node, data.shape, f"{imp.base_name(node)}_const")
    value = imp.const(f"{out}_value", np.asarray(data, dtype=np.float64))
    imp.graph.nodes.append(Node(out, Op.CONST, [value], [out], {}, imp.names(node)[2]))
    return out


def _with_const(imp: _Importer, node, op: Op, a, b) -> _Act:
    """`op` of an activation and a constant initializer that is not a scalar (Add of a positional embedding,
    Mul by a (1, C, H, W) map): the constant, broadcast to the activation's ONNX shape and laid out as the
    activation lies, becomes a CONST node (as the PyTorch front end's _with_const)."""
    from .layout import canonical

    x, value, const_first = (b, a, True) if isinstance(b, _Act) else (a, b, False)
    shape = imp.shape_of(x.name)
    sizes = (1, *shape[1:]) if x.natural else torch_shape_of(shape, x.rank)
    value = np.asarray(value, dtype=np.float64)
    try:
        ok = np.broadcast_shapes(value.shape, sizes) == tuple(sizes)
    except ValueError:
        ok = False
    if not ok or not np.all(np.isfinite(value)):
        raise imp.err(node, f"{op.value} of an activation of shape {list(sizes)} and a constant of shape "
                            f"{list(value.shape)}; qgen supports a finite constant that broadcasts to the activation's "
                            "shape (the activation itself is not broadcast)")
    full = np.broadcast_to(value, sizes)
    data = full.reshape(shape) if x.natural else full.reshape(-1)[canonical(sizes).torch_index()].reshape(shape)
    c = _const_node(imp, node, data)
    inputs = [c, x.name] if const_first and op is Op.SUB else [x.name, c]  # C - x; else x first
    return _Act(imp.add(node, op, inputs, shape), x.rank, x.natural)


def _div(imp: _Importer, node) -> _Act:
    a, b = (imp.values.get(i) for i in node.input)
    k = _scalar(b)
    if not isinstance(a, _Act) or k is None or k == 0.0:
        raise imp.err(node, "division by an activation (or by zero); qgen supports dividing an activation by a "
                            "nonzero constant")
    return _affine(imp, node, a, 1.0 / k, 0.0)


def _sub(imp: _Importer, node) -> _Act:
    a, b = (imp.values.get(i) for i in node.input)
    if isinstance(a, _Act) and _scalar(b) is not None:
        return _affine(imp, node, a, 1.0, -_scalar(b))
    if isinstance(b, _Act) and _scalar(a) is not None:
        return _affine(imp, node, b, -1.0, _scalar(a))
    return _two_activations(imp, node, Op.SUB)


def _extremum(op: Op) -> Callable[[_Importer, Any], _Act]:
    """Max / Min of two activations; of an activation and a scalar it is a clamp (Max(x, 0) = ReLU)."""
    def handler(imp: _Importer, node) -> _Act:
        if len(node.input) != 2:
            raise imp.err(node, f"{node.op_type} of {len(node.input)} inputs; qgen supports two")
        a, b = (imp.values.get(i) for i in node.input)
        x, k = (a, _scalar(b)) if isinstance(a, _Act) else (b, _scalar(a))
        if isinstance(x, _Act) and k is not None:
            lo, hi = (k, None) if op is Op.MAXIMUM else (None, k)
            return _Act(imp.add(node, Op.RELU, [x.name], imp.shape_of(x.name), lo=lo, hi=hi), x.rank)
        return _two_activations(imp, node, op)
    return handler


def _prelu(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    slope = np.asarray(imp.input_const(node, 1, "the slope"), dtype=np.float64)
    channels = imp.shape_of(x.name)[-1]
    alpha = slope.reshape(-1)
    full = (1,) * (x.rank - slope.ndim) + tuple(slope.shape)  # ONNX broadcasting: right-aligned to (N, C, ...)
    if alpha.size != 1 and (alpha.size != channels or len(full) != x.rank or full[1] != channels):
        raise imp.err(node, f"PRelu slope of shape {list(slope.shape)} on {channels} channels; qgen supports one "
                            "slope or one per channel")
    return _Act(imp.add(node, Op.PRELU, [x.name], imp.shape_of(x.name),
                        alpha=tuple(_f32(float(v)) for v in alpha)), x.rank)


def _shape(imp: _Importer, node) -> np.ndarray:
    """Shape of an activation: a constant (qgen compiles fixed shapes), for shape arithmetic."""
    x = imp.input_act(node)
    shape = np.array(torch_shape_of(imp.shape_of(x.name), x.rank), dtype=np.int64)
    start, end = imp.attr(node, "start", 0), imp.attr(node, "end")
    return shape[start:end]


def _identity(imp: _Importer, node) -> _Act:
    return imp.input_act(node)


def _dropout(imp: _Importer, node) -> _Act:
    if len(node.output) > 1 and node.output[1]:
        raise imp.err(node, "the mask output of Dropout is not supported")
    return imp.input_act(node)


EDGE_MODES = ("reflect", "edge", "wrap")


def _edge_pad(imp: _Importer, node, x: _Act, begin: list[int], end: list[int], mode: str) -> _Act:
    """Pad mode reflect / edge / wrap (torch's padding_mode reflect / replicate / circular) of H and W: slices of x
    concatenated before and after it along each padded dim (data movement only), as the torch front end does."""
    cur = x
    for dim in (2, 3):
        before, after, axis = begin[dim], end[dim], ir_axis(dim, 4)
        if not (before or after):
            continue
        size = imp.shape_of(cur.name)[axis]
        if mode == "reflect" and max(before, after) >= size:
            raise imp.err(node, f"reflect padding of {max(before, after)} on a dim of size {size}; needs padding "
                                "< size")

        def cut(start: int, length: int, src: _Act = cur, dim: int = dim) -> _Act:
            return _slice_act(imp, node, src, dim, start, length)

        if mode == "wrap":
            head = [cut(size - before, before)] if before else []
            tail = [cut(0, after)] if after else []
        elif mode == "edge":
            head, tail = [cut(0, 1)] * before, [cut(size - 1, 1)] * after
        else:  # reflect: x[before], ..., x[1] | x | x[size - 2], ..., x[size - 1 - after]
            head = [cut(i, 1) for i in range(before, 0, -1)]
            tail = [cut(size - 1 - i, 1) for i in range(1, after + 1)]
        shape = list(imp.shape_of(cur.name))
        shape[axis] = size + before + after
        cur = _Act(imp.add(node, Op.CONCAT, [p.name for p in head + [cur] + tail], tuple(shape), axis=axis), 4)
    return cur


def _pad(imp: _Importer, node) -> _Act:
    x = imp.input_act(node)
    pads = [int(p) for p in np.asarray(imp.input_const(node, 1, "pads")).reshape(-1)]
    value = imp.input_const(node, 2, "constant_value")
    axes = imp.input_const(node, 3, "axes") if imp.opset >= 18 else None
    mode = imp.attr(node, "mode", "constant")
    if mode not in EDGE_MODES + ("constant",) or (value is not None and np.any(np.asarray(value) != 0)):
        raise imp.err(node, f"padding mode '{mode}' with value {value if value is None else np.asarray(value).tolist()};"
                            " qgen supports zero padding and modes reflect, edge, wrap")
    rank = x.rank
    if axes is not None:
        full = [0] * (2 * rank)
        ax = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
        for i, a in enumerate(ax):
            full[a], full[rank + a] = pads[i], pads[len(ax) + i]
        pads = full
    begin, end = pads[:rank], pads[rank:]
    if rank == 4 and begin[:2] == [0, 0] and end[:2] == [0, 0] and min(pads) < 0 and mode == "constant":
        for dim in (2, 3):  # negative pads crop (U-Net): slices, then the zero padding of the positive pads
            cut_begin, cut_end = max(-begin[dim], 0), max(-end[dim], 0)
            size = imp.shape_of(x.name)[ir_axis(dim, 4)]
            if cut_begin + cut_end >= size:
                raise imp.err(node, f"pads {pads} crop dim {dim} of size {size} to nothing")
            x = _slice_act(imp, node, x, dim, cut_begin, size - cut_begin - cut_end)
        begin, end = [max(p, 0) for p in begin], [max(p, 0) for p in end]
        pads = begin + end
        if not any(pads):
            return x
    if rank != 4 or begin[:2] != [0, 0] or end[:2] != [0, 0] or min(pads) < 0:
        raise imp.err(node, f"pads {pads}; qgen supports non-negative zero padding of H and W of (1, C, H, W)")
    if mode in EDGE_MODES:
        return _edge_pad(imp, node, x, begin, end, mode)
    top, left, bottom, right = begin[2], begin[3], end[2], end[3]
    h, w, c = imp.shape_of(x.name)
    out = imp.add(node, Op.PAD, [x.name], (h + top + bottom, w + left + right, c),
                  padding=(top, left, bottom, right))
    return _Act(out, 4)


def _concat(imp: _Importer, node) -> _Act:
    parts = [imp.values.get(i) for i in node.input]
    acts = [p for p in parts if isinstance(p, _Act)]
    if not acts or any(p is None for p in parts):
        raise imp.err(node, "concatenation of constants only; qgen computes on activations")
    rank = acts[0].rank
    for i, p in enumerate(parts):  # a constant part (a cls token): a CONST node in the conventional layout
        if isinstance(p, _Act):
            parts[i] = imp.in_convention(node, p)
            continue
        from .layout import canonical, canonical_shape

        p = np.asarray(p, dtype=np.float64)
        if p.ndim != rank or p.shape[0] != 1 or not np.all(np.isfinite(p)):
            raise imp.err(node, f"concatenation with a constant of shape {list(p.shape)}; qgen concatenates a finite "
                                f"constant of the result's rank {rank} and batch 1")
        data = p.reshape(-1)[canonical(p.shape).torch_index()].reshape(canonical_shape(p.shape))
        parts[i] = _Act(_const_node(imp, node, data), rank)
    try:
        axis = ir_axis(int(imp.attr(node, "axis")), rank)
    except ValueError:
        raise imp.err(node, "concatenation along the batch dimension is not supported") from None
    shape = list(imp.shape_of(parts[0].name))
    shape[axis] = sum(imp.shape_of(p.name)[axis] for p in parts)
    return _Act(imp.add(node, Op.CONCAT, [p.name for p in parts], tuple(shape), axis=axis), rank)


def _softmax(imp: _Importer, node, op: Op = Op.SOFTMAX) -> _Act:
    x = imp.input_act(node)
    axis = int(imp.attr(node, "axis", -1))
    masked = isinstance(x, onnx_masks.MaskedAct)  # Where(mask, -inf, scores) / scores + mask before it
    if masked and (op is not Op.SOFTMAX or not ((x.natural and axis % 3 == 2) or (x.rank == 2 and axis % 2 == 1))):
        raise imp.err(node, "a masked input; qgen supports a constant mask before Softmax over the last axis of "
                            "(1, M, N) attention scores or of a (1, F) vector")
    if x.natural and axis % 3 == 2:  # attention scores (1, M, N) over N: innermost
        out = imp.add(node, op, [x.name], imp.shape_of(x.name))
        if masked:
            onnx_masks.apply(imp, node, x, out)
        return _Act(out, 3, natural=True)
    x = imp.in_convention(node, x)
    try:
        last = ir_axis(axis, x.rank) == len(imp.shape_of(x.name)) - 1
    except ValueError:
        last = False
    if not last:
        name = "log_softmax" if op is Op.LOG_SOFTMAX else "softmax"
        raise imp.err(node, f"{name} over axis {axis}; qgen supports {name} over the channel/feature axis")
    out = imp.add(node, op, [x.name], imp.shape_of(x.name))
    if masked:  # a (1, F) vector
        onnx_masks.apply(imp, node, imp.values[node.input[0]], out)
    return _Act(out, x.rank)


def _log_softmax(imp: _Importer, node) -> _Act:
    return _softmax(imp, node, Op.LOG_SOFTMAX)


def _lut(fn: str) -> Callable[[_Importer, Any], _Act]:
    def handler(imp: _Importer, node) -> _Act:
        x = imp.input_act(node)
        attrs: dict[str, Any] = {}
        if fn == "leaky_relu":
            attrs["alpha"] = _f32(imp.attr(node, "alpha", 0.01))
        if fn == "elu":
            attrs["alpha"] = _f32(imp.attr(node, "alpha", 1.0))
        if fn == "gelu":
            attrs["approximate"] = imp.attr(node, "approximate", "none")
        if fn == "celu":
            attrs["alpha"] = _f32(imp.attr(node, "alpha", 1.0))
        if fn == "selu":  # ONNX's defaults are PyTorch's constants rounded to float32
            alpha, gamma = imp.attr(node, "alpha", 1.6732632423543772), imp.attr(node, "gamma", 1.0507009873554805)
            if abs(alpha - 1.6732632423543772) > 1e-6 or abs(gamma - 1.0507009873554805) > 1e-6:
                raise imp.err(node, f"Selu with alpha={alpha:.6g}, gamma={gamma:.6g}; qgen supports PyTorch's SELU "
                                    "(alpha=1.67326, gamma=1.0507)")
        if fn == "threshold":  # ThresholdedRelu: x if x > alpha else 0
            attrs["threshold"], attrs["value"] = _f32(imp.attr(node, "alpha", 1.0)), 0.0
        if fn == "shrink":  # x - bias above lambd, x + bias below -lambd, else 0: Hard- (bias 0) or Softshrink
            lambd, bias = _f32(imp.attr(node, "lambd", 0.5)), _f32(imp.attr(node, "bias", 0.0))
            if bias not in (0.0, lambd):
                raise imp.err(node, f"Shrink with lambd={lambd:.6g}, bias={bias:.6g}; qgen supports bias=0 "
                                    "(Hardshrink) and bias=lambd (Softshrink)")
            shrink = "hardshrink" if bias == 0.0 else "softshrink"
            return _Act(imp.add(node, Op.LUT, [x.name], imp.shape_of(x.name), fn=shrink, lambd=lambd), x.rank)
        if fn == "hardsigmoid":
            alpha, beta = imp.attr(node, "alpha", 0.2), imp.attr(node, "beta", 0.5)
            if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-7:
                raise imp.err(node, f"HardSigmoid with alpha={alpha:.6g}, beta={beta:.6g}; qgen supports PyTorch's "
                                    "hardsigmoid (alpha=1/6, beta=0.5)")
        return _Act(imp.add(node, Op.LUT, [x.name], imp.shape_of(x.name), fn=fn, **attrs), x.rank)
    return handler


def _conv_transpose(imp: _Importer, node) -> _Act:
    """ConvTranspose (any group, any dilations, explicit pads) -> conv_transpose2d (codegen/ops/upsample.py)."""
    from ..ops.upsample import weight_from_torch

    x = imp.input_act(node)
    w = np.asarray(imp.input_const(node, 1, "the weight"), np.float64)  # (Cin, Cout, KH, KW) / (Cin, Cout, K)
    b = imp.input_const(node, 2, "the bias")
    n_sp = w.ndim - 2
    strides = [int(v) for v in imp.attr(node, "strides") or [1] * n_sp]
    pads = [int(v) for v in imp.attr(node, "pads") or [0] * (2 * n_sp)]
    out_pad = [int(v) for v in imp.attr(node, "output_padding") or [0] * n_sp]
    dil, group = [int(d) for d in imp.attr(node, "dilations") or [1] * n_sp], int(imp.attr(node, "group", 1))
    if len(dil) != n_sp or not 1 <= min(dil) <= max(dil) <= 255:
        raise imp.err(node, f"dilations={dil}; qgen's transposed convolution supports one dilation per spatial "
                            "axis, 1 to 255")
    if group < 1 or w.shape[0] % group or imp.shape_of(x.name)[-1] != w.shape[0]:
        raise imp.err(node, f"group={group} with a ({', '.join(map(str, w.shape))}) weight; group must divide the "
                            "input channels (the weight's first axis)")
    if imp.attr(node, "auto_pad", "NOTSET") != "NOTSET" or imp.attr(node, "output_shape") is not None:
        raise imp.err(node, "auto_pad / output_shape; qgen needs explicit pads and output_padding")
    if x.rank == 3 and w.ndim == 3:  # ConvTranspose1d: a 1 x K image kernel
        w, strides, pads, out_pad = w[:, :, None, :], [1, strides[0]], [0, pads[0], 0, pads[1]], [0, out_pad[0]]
        dil = [1, dil[0]]
    elif x.rank != 4 or w.ndim != 4:
        raise imp.err(node, f"transposed convolution of a {x.rank}-D input; qgen supports 1-D and 2-D")
    h, wd, _ = imp.shape_of(x.name)
    _, og, kh, kw = w.shape
    cout = og * group
    crop = (pads[0], pads[1], pads[2] - out_pad[0], pads[3] - out_pad[1])
    oh = (h - 1) * strides[0] + (kh - 1) * dil[0] + 1 - crop[0] - crop[2]
    ow = (wd - 1) * strides[1] + (kw - 1) * dil[1] + 1 - crop[1] - crop[3]
    base = imp.base_name(node)
    wname = imp.const(f"{base}_w", weight_from_torch(w, group))  # (Cout, KH, KW, Cin/group)
    bname = imp.const(f"{base}_b", np.asarray(b, np.float64) if b is not None else np.zeros(cout))
    out = imp.add(node, Op.CONV_TRANSPOSE2D, [x.name, wname, bname], (oh, ow, cout), stride=tuple(strides),
                  crop=crop, **({"groups": group} if group != 1 else {}),
                  **({"dilation": tuple(dil)} if tuple(dil) != (1, 1) else {}))
    return _Act(out, x.rank)


# (ONNX mode, coordinate_transformation_mode, nearest_mode) -> the torch mode qgen's resize computes
_RESIZE_MODES = {("nearest", "asymmetric", "floor"): ("nearest", False),
                 ("nearest", "half_pixel", "round_prefer_ceil"): ("nearest_exact", False),
                 ("nearest", "pytorch_half_pixel", "round_prefer_ceil"): ("nearest_exact", False),
                 ("linear", "half_pixel", None): ("bilinear", False),
                 ("linear", "pytorch_half_pixel", None): ("bilinear", False),
                 ("linear", "align_corners", None): ("bilinear", True)}


def _resize(imp: _Importer, node) -> _Act:
    """Resize (opset 11+: X, roi, scales, sizes) / Upsample (opset 9: X, scales; asymmetric) -> resize."""
    x = imp.input_act(node)
    mode = imp.attr(node, "mode", "nearest")
    if node.op_type == "Upsample":
        coords, scales, sizes = "asymmetric", imp.input_const(node, 1, "the scales"), None
    else:
        coords = imp.attr(node, "coordinate_transformation_mode", "half_pixel")
        scales, sizes = imp.input_const(node, 2, "the scales"), imp.input_const(node, 3, "the sizes")
    key = (mode, coords, imp.attr(node, "nearest_mode", "round_prefer_floor") if mode == "nearest" else None)
    if key not in _RESIZE_MODES or int(imp.attr(node, "antialias", 0)):
        raise imp.err(node, f"mode '{mode}' with coordinate_transformation_mode '{coords}'; qgen supports nearest "
                            "(asymmetric + floor: PyTorch 'nearest'; half_pixel + round_prefer_ceil: 'nearest-exact') "
                            "and linear (half_pixel or align_corners)")
    torch_mode, align = _RESIZE_MODES[key]
    shape = imp.shape_of(x.name)
    if x.rank not in (3, 4) or len(shape) != 3:
        raise imp.err(node, f"resize of a {x.rank}-D tensor; qgen resizes (1, C, H, W) images and (1, C, L) sequences")
    spatial = shape[:2] if x.rank == 4 else shape[1:2]
    if sizes is not None and len(np.asarray(sizes)):
        sizes = [int(v) for v in np.asarray(sizes)]
        out, factors = sizes[2:], [None] * len(spatial)
        if sizes[:2] != [1, shape[2]]:
            raise imp.err(node, f"sizes {sizes} resize the batch or channels; qgen resizes H and W only")
    elif scales is not None and len(np.asarray(scales)):
        factors = [float(v) for v in np.asarray(scales, np.float32)]
        if factors[:2] != [1.0, 1.0]:
            raise imp.err(node, f"scales {factors} resize the batch or channels; qgen resizes H and W only")
        factors = factors[2:]
        out = [int(np.floor(n * f)) for n, f in zip(spatial, factors)]
    else:
        raise imp.err(node, "neither scales nor sizes given")
    if x.rank == 3:
        out, factors = [1, out[0]], [None, factors[0]]
    out_shape = (out[0], out[1], shape[2])
    name = imp.add(node, Op.RESIZE, [x.name], out_shape, mode=torch_mode, align_corners=align,
                   size=(out[0], out[1]), scales=tuple(factors))
    return _Act(name, x.rank)


# ---------------------------------------------------------------------------------- layout: Slice, Split, Transpose


def _slice_act(imp: _Importer, node, x: _Act, onnx_dim: int, start: int, length: int) -> _Act:
    """x[..., start:start + length, ...] along ONNX dim `onnx_dim` -> SLICE (no code where it is a contiguous run
    of x: codegen/ops/matmul.py slice_alias)."""
    if x.rank == 2 and x.name in imp.flat_from_image:
        raise imp.err(node, "slices a flattened image, whose elements lie in another order in qgen; slice the "
                            "image before flattening it")
    axis = ir_axis(onnx_dim, x.rank)
    shape = list(imp.shape_of(x.name))
    if start == 0 and length == shape[axis]:
        return x
    shape[axis] = length
    return _Act(imp.add(node, Op.SLICE, [x.name], tuple(shape), axis=axis, start=start, length=length), x.rank)


def _batch_dim(imp: _Importer, node, what: str) -> UserError:
    return imp.err(node, f"{what} along the batch dimension (0); qgen runs one sample at a time (batch 1). "
                         "Slice, split or transpose the other dimensions")


def _slice(imp: _Importer, node) -> _Act:
    """Slice of an activation (x[:, a:b], narrow, chunk as exported): one SLICE per sliced dim, step 1."""
    x = imp.input_act(node)

    def ints(i: int, what: str) -> list[int] | None:
        value = imp.input_const(node, i, what)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    starts, ends = ints(1, "the starts"), ints(2, "the ends")
    axes, steps = ints(3, "the axes"), ints(4, "the steps")
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    onnx_shape = torch_shape_of(imp.shape_of(x.name), x.rank)
    for a, s0, e, step in zip(axes, starts, ends, steps):
        a %= x.rank
        start, stop, _ = slice(s0, e, 1).indices(onnx_shape[a])
        if step != 1 and not (x.rank == 4 and a in (2, 3) and step > 1):
            raise imp.err(node, f"Slice with step {step} along dim {a}; qgen slices with step 1, and with a positive "
                                "step along H or W of (1, C, H, W). Use a strided convolution or pooling to subsample")
        if stop <= start:
            raise imp.err(node, f"Slice [{s0}, {e}) of dim {a} (size {onnx_shape[a]}) is empty")
        if step != 1:  # x[..., a:b:s] along H / W (space-to-depth): the contiguous part, then a 1 x 1 max pool
            x = _slice_act(imp, node, x, a, start, stop - start)
            h, w, c = imp.shape_of(x.name)
            axis = ir_axis(a, 4)
            out = (-(-h // step), w, c) if axis == 0 else (h, -(-w // step), c)
            x = _Act(imp.add(node, Op.MAXPOOL2D, [x.name], out, kernel=(1, 1),
                             stride=(step, 1) if axis == 0 else (1, step), padding=(0, 0, 0, 0)), 4)
            continue
        if a == 0:
            if (start, stop) != (0, 1):
                raise _batch_dim(imp, node, "Slice")
            continue
        x = _slice_act(imp, node, x, a, start, stop - start)
    return x


def _split(imp: _Importer, node) -> _Act | None:
    """Split (torch.chunk / split / unbind as exported) -> one SLICE per output that is read."""
    x = imp.input_act(node)
    axis = int(imp.attr(node, "axis", 0)) % x.rank
    if axis == 0:
        raise _batch_dim(imp, node, "Split")
    size = torch_shape_of(imp.shape_of(x.name), x.rank)[axis]
    sizes = imp.input_const(node, 1, "the split sizes") if len(node.input) > 1 else imp.attr(node, "split")
    if sizes is None:  # equal parts, the last one smaller (opset 18 num_outputs)
        n = int(imp.attr(node, "num_outputs", len(node.output)))
        chunk = -(-size // n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
    if sum(sizes) != size or len(sizes) != len(node.output) or min(sizes) < 1:
        raise imp.err(node, f"Split sizes {sizes} of dim {axis} (size {size}) into {len(node.output)} outputs")
    read = set(imp.users) | {o.name for o in imp.model.graph.output}
    start = 0
    for name, length in zip(node.output, sizes):
        if name and name in read:  # only the parts something reads are made
            imp.values[name] = _slice_act(imp, node, x, axis, start, length)
        start += length
    return imp.values.get(node.output[0])


def _ir_perm(rank: int, perm: list[int]) -> tuple[int, ...]:
    """The IR permutation of an ONNX Transpose `perm` (batch first) of a rank-`rank` activation: IR output axis j
    holds ONNX output dim d, that is ONNX input dim perm[d], which lies on IR input axis ir_axis(perm[d])."""
    onnx_dim = {ir_axis(d, rank): d for d in range(1, rank)}  # IR axis -> ONNX dim (rank 3: IR axis 0 is a 1)
    n_axes = len(ir_shape_of((1,) * rank))
    return tuple(ir_axis(perm[onnx_dim[j]], rank) if j in onnx_dim else j for j in range(n_axes))


def _transpose(imp: _Importer, node) -> _Act:
    """Transpose of an activation, batch first: TRANSPOSE in qgen's layout (none when the IR order is kept)."""
    x = imp.input_act(node)
    perm = [int(p) % x.rank for p in (imp.attr(node, "perm") or range(x.rank - 1, -1, -1))]
    if x.rank == 3 and perm == [0, 2, 1]:  # (1, A, B) -> (1, B, A): the same bytes, read in the other layout
        return _Act(x.name, 3, natural=not x.natural)
    x = imp.in_convention(node, x)
    if perm[0] != 0:
        raise _batch_dim(imp, node, f"Transpose perm {perm} moves a dimension")
    onnx_out = tuple(torch_shape_of(imp.shape_of(x.name), x.rank)[p] for p in perm)
    ir_perm = _ir_perm(x.rank, perm)
    if ir_perm == tuple(range(len(ir_perm))):
        return x
    if x.rank == 2:  # (1, F): nothing to move
        return x
    return _Act(imp.add(node, Op.TRANSPOSE, [x.name], ir_shape_of(onnx_out), perm=ir_perm), x.rank)


def _channel_shuffle(imp: _Importer, node, x: _Act, shape: list[int]):
    """Reshape (1, C, H, W) -> (1, g, C/g, H, W), Transpose (0, 2, 1, 3, 4), Reshape back to (1, C, H, W) (ShuffleNet's
    channel shuffle as exported) -> one per-pixel TRANSPOSE (H*W, g, C/g) -> (H*W, C/g, g). Returns the final value's
    _Act (the Transpose and second Reshape are skipped), or None if the pattern is not there."""
    users = imp.users.get(node.output[0], [])
    if x.rank != 4 or len(shape) != 5 or len(users) != 1 or users[0].op_type != "Transpose":
        return None
    tr = users[0]
    back = imp.users.get(tr.output[0], [])
    h, w, c = imp.shape_of(x.name)
    g, cg = shape[1], shape[2]
    if [int(p) for p in imp.attr(tr, "perm") or []] != [0, 2, 1, 3, 4] or shape != [1, g, cg, h, w] or \
            g * cg != c or len(back) != 1 or back[0].op_type != "Reshape":
        return None
    target = [int(v) for v in np.asarray(imp.values.get(back[0].input[1], [])).reshape(-1)]
    if [t if t != -1 else c for t in target] not in ([1, c, h, w], [-1, c, h, w]) and target[1:] != [c, h, w]:
        return None
    pix = imp.add(node, Op.RESHAPE, [x.name], (h * w, g, cg), shape=(h * w, g, cg))
    out = imp.add(tr, Op.TRANSPOSE, [pix], (h * w, cg, g), perm=(0, 2, 1))
    result = _Act(imp.add(back[0], Op.RESHAPE, [out], (h, w, c), shape=(h, w, c)), 4)
    nodes = list(imp.model.graph.node)
    imp.skip.update(i for i, n in enumerate(nodes) if n is tr or n is back[0])
    imp.values[back[0].output[0]] = result
    return result


def _matmul_activations(imp: _Importer, node) -> _Act:
    """MatMul of two activations, (1, M, K) @ (1, K, N) or (1, B, M, K) @ (1, B, K, N) -> MATMUL of A (B, M, K)
    and B^T (B, N, K), K innermost in both: qgen's layout of the first operand is transposed (a copy), the second
    lies right; the (B, M, N) product is copied back into qgen's layout of a (1, M, N) / (1, B, M, N) tensor."""
    from ..ops.matmul import MAX_K

    a, b = imp.input_act(node, 0), imp.input_act(node, 1)
    if a.rank == 3 and b.rank == 3 and (a.natural or b.natural):
        return _matmul_tokens(imp, node, a, b)
    a, b = imp.in_convention(node, a), imp.in_convention(node, b)
    sa, sb = (torch_shape_of(imp.shape_of(v.name), v.rank) for v in (a, b))
    if a.rank != b.rank or a.rank not in (3, 4) or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise imp.err(node, f"MatMul of activations {list(sa)} and {list(sb)}; qgen multiplies (1, M, K) @ (1, K, N) "
                            "and (1, B, M, K) @ (1, B, K, N) activations (no broadcasting). Reshape the operands")
    (m, k), n = sa[-2:], sb[-1]
    if k > MAX_K:
        raise imp.err(node, f"MatMul over K = {k} products; qgen's int32 sums hold at most {MAX_K}")
    batch = sa[1] if a.rank == 4 else 1
    if a.rank == 3:  # IR (1, K, M) / (1, N, K) / result (1, N, M)
        xa = imp.add(node, Op.TRANSPOSE, [a.name], (1, m, k), perm=(0, 2, 1))
        xb, back = b.name, (0, 2, 1)
    else:  # IR (M, K, B) / (K, N, B) / result (M, N, B)
        xa = imp.add(node, Op.TRANSPOSE, [a.name], (batch, m, k), perm=(2, 0, 1))
        xb, back = imp.add(node, Op.TRANSPOSE, [b.name], (batch, n, k), perm=(2, 1, 0)), (1, 2, 0)
    y = imp.add(node, Op.MATMUL, [xa, xb], (batch, m, n))
    out = ir_shape_of((1, m, n) if a.rank == 3 else (1, batch, m, n))
    return _Act(imp.add(node, Op.TRANSPOSE, [y], out, perm=back), a.rank)


def _matmul_tokens(imp: _Importer, node, a: _Act, b: _Act) -> _Act:
    """(1, M, K) @ (1, K, N) with an operand in the natural layout (attention: q @ k^T, softmax(.) @ v): MATMUL
    of A (1, M, K) and B^T (1, N, K), K innermost in both. A natural A lies right; B^T is a conventional B as it
    lies (q @ Transpose(k): no copy), a natural B transposed once (softmax(.) @ v). The product is natural."""
    from ..ops.matmul import MAX_K

    a = imp.in_natural(node, a)
    _, m, k = imp.shape_of(a.name)
    bt = b.name if not b.natural else imp.in_convention(node, b).name  # IR (1, N, K)
    _, n, kb = imp.shape_of(bt)
    if kb != k:
        raise imp.err(node, f"MatMul of activations (1, {m}, {k}) and (1, {kb}, {n}); the inner sizes must agree")
    if k > MAX_K:
        raise imp.err(node, f"MatMul over K = {k} products; qgen's int32 sums hold at most {MAX_K}")
    return _Act(imp.add(node, Op.MATMUL, [a.name, bt], (1, m, n)), 3, natural=True)


def _reads_tokens(imp: _Importer, name: str) -> bool:
    """A (1, L, D) input read as tokens: some user normalises or multiplies its last axis (LayerNormalization,
    MatMul with a 2-D weight), so it is held (1, L, D) (io_layout nlc) rather than as an (N, C, L) sequence."""
    for u in imp.users.get(name, []):
        if u.op_type == "LayerNormalization" and int(imp.attr(u, "axis", -1)) % 3 == 2:
            return True
        if u.op_type == "MatMul" and u.input[0] == name and np.ndim(imp.values.get(u.input[1])) == 2:
            return True
    return False


HANDLERS: dict[str, Callable[[_Importer, Any], Any]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Resize": _resize,
    "Upsample": _resize,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "GroupNormalization": _group_norm,
    "InstanceNormalization": _group_norm,
    "Relu": _relu,
    "Clip": _clip,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Add": _add,
    "Mul": _mul,
    "Div": _div,
    "Sub": _sub,
    "Neg": lambda imp, node: _affine(imp, node, imp.input_act(node), -1.0, 0.0),
    "Max": _extremum(Op.MAXIMUM),
    "Min": _extremum(Op.MINIMUM),
    "PRelu": _prelu,
    "Pad": _pad,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Transpose": _transpose,
    "Softmax": _softmax,
    "Where": onnx_masks.where,
    "LogSoftmax": _log_softmax,
    "Sigmoid": _lut("sigmoid"),
    "Tanh": _lut("tanh"),
    "HardSigmoid": _lut("hardsigmoid"),
    "HardSwish": _lut("hardswish"),
    "Gelu": _lut("gelu"),
    "LeakyRelu": _lut("leaky_relu"),
    "Elu": _lut("elu"),
    "Exp": _lut("exp"),
    "Softplus": _lut("softplus"),
    "Mish": _lut("mish"),
    "Selu": _lut("selu"),
    "Celu": _lut("celu"),
    "Abs": _lut("abs"),
    "Softsign": _lut("softsign"),
    "ThresholdedRelu": _lut("threshold"),
    "Shrink": _lut("shrink"),
    "Identity": _identity,
    "Dropout": _dropout,
    "Shape": _shape,
    "GRU": onnx_recurrent.recurrent,
    "LSTM": onnx_recurrent.recurrent,
    "RNN": onnx_recurrent.recurrent,
}
# handlers that read natural-layout values themselves (_Act.natural); every other one gets the convention
NATURAL_OK = frozenset({"MatMul", "LayerNormalization", "Softmax", "Transpose", "Add", "Sub", "Mul", "Div", "Where"})
