"""Choose int8 or int16 activations per layer (mixed precision).

A layer's precision is the width of its *output* activation: `attrs["out_bits"]` = 16 on a conv,
depthwise, linear, add or concat makes that tensor int16 (weights stay int8; the C kernels take
any mix of int8/int16 input and output, firmware/kernels/qg_wide.c). Pooling, clamp, padding and
reshape keep their input's type. Softmax and LUT activations work on int8 (256-entry tables), and
the model's outputs stay int8 (the C API), so a layer feeding them cannot be int16. The model input
may be int16 (`input=int16`: `<prefix>_run` then takes `const int16_t *`), e.g. for 16-bit sensor or
audio samples whose small values int8 would round away.

`run(graph, spec)` takes {layer name: bits} as given by `--precision name=int16`; the quantize
pass reads the result through `tensor_bits`, and refuses a graph that breaks the rules above.

Weight width (int4): spec value 4 (`--precision name=w4`) gives a conv2d, depthwise or linear layer int4
weights (`attrs["weight_bits"] = 4`: packed two per byte, weight_storage "int4") with int8 activations;
`weights="int4"` (`--weights int4`) does so for every such layer the spec does not name, except those whose
input or output is int16 or whose weights are compressed (sparse/clustered), which keep int8 weights.
Value 8 (`name=int8` or `name=w8`) keeps a layer all int8; 16 gives int16 output and int8 weights.
"""
from __future__ import annotations

from ..errors import UserError
from ..ir import Graph, Node
from ..ops import Trait, has, with_trait

CHOOSABLE_OPS = with_trait(Trait.CHOOSES_FORMAT)
FOLLOW_OPS = with_trait(Trait.KEEPS_FORMAT)  # output type = input type
INT8_INPUT_OPS = with_trait(Trait.INT8_ONLY)
BITS = (4, 8, 16)  # 4: int4 weights (int8 activations); 8: all int8; 16: int16 output activations
INPUT = "input"  # the spec key for the model input
WEIGHT_CHOICES = ("int8", "int4")  # --weights


def parse_spec(items: list[str] | None) -> dict[str, int]:
    """['features.0=int16', 'fc=int8,conv=int16'] -> {'features.0': 16, 'fc': 8, 'conv': 16}."""
    spec: dict[str, int] = {}
    for item in items or []:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, kind = part.rpartition("=")
            bits = {"int8": 8, "int16": 16, "8": 8, "16": 16, "w8": 8, "w4": 4}.get(kind.strip().lower())
            if not sep or not name or bits is None:
                raise UserError(f"--precision '{part}': expected LAYER=int8, LAYER=int16 (activations) or "
                                "LAYER=w4 (int4 weights), e.g. features.0=int16 or fc=w4")
            spec[name.strip()] = bits
    return spec


def run(graph: Graph, spec: dict[str, int] | None, weights: str = "int8") -> Graph:
    by_name = {n.name: n for n in graph.nodes}
    if weights not in WEIGHT_CHOICES:
        raise UserError(f"--weights {weights}: qgen supports {' and '.join(WEIGHT_CHOICES)} weights")
    for name, bits in (spec or {}).items():
        if bits not in BITS:
            raise UserError(f"--precision {name}={bits}: qgen supports int8 and int16 activations and int4 weights")
        if name == INPUT and bits == 4:
            raise UserError("--precision input=w4: the model input has no weights; int4 applies to conv2d, "
                            "depthwise and linear layers")
        if name == INPUT:
            graph.input_bits = bits
            continue
        node = by_name.get(name)
        if node is None:
            choices = ", ".join([INPUT] + [n.name for n in graph.nodes if n.op in CHOOSABLE_OPS])
            raise UserError(f"--precision names layer '{name}', which the model does not have; "
                            f"layers whose precision can be set: {choices}")
        if node.op in FOLLOW_OPS:
            src = graph.producer(node.inputs[0])
            raise UserError(f"{node.where()} keeps its input's type; set the precision on the layer that "
                            f"produces its input ({src.name if src else 'the model input'})")
        if node.op not in CHOOSABLE_OPS:
            raise UserError(f"{node.where()} computes in int8 only ({_int8_reason(node)}); keep it int8")
        if bits == 4:
            _check_int4(node)
            node.attrs["weight_bits"] = 4
        else:
            node.attrs.pop("weight_bits", None)
        if bits == 16:
            node.attrs["out_bits"] = 16
        else:
            node.attrs.pop("out_bits", None)
    if weights == "int4":
        named = set(spec or {})
        bits_of = tensor_bits(graph)
        for node in graph.nodes:
            if node.name in named or _int4_obstacle(node) or node.attrs.get("weight_format", "dense") != "dense":
                continue
            if all(bits_of.get(t, 8) == 8 for t in node.inputs[:1] + node.outputs):
                node.attrs["weight_bits"] = 4
    check_bits(graph, tensor_bits(graph))
    return graph


def will_be_int4(spec: dict[str, int] | None, weights: str):
    """node -> whether run(graph, spec, weights) gives it int4 weights (int16 neighbours aside): the early flash
    check (limits.check_float_graph) counts those at half a byte per weight."""
    spec = spec or {}

    def int4(node: Node) -> bool:
        if node.name in spec:
            return spec[node.name] == 4
        return (weights == "int4" and _int4_obstacle(node) is None
                and node.attrs.get("weight_format", "dense") == "dense")
    return int4


def _int4_obstacle(node: Node) -> str | None:
    """Why `node` cannot have int4 weights (None: it can)."""
    from ..weight_storage import INT4_OPS

    if node.op not in INT4_OPS:
        return f"int4 weights apply to {', '.join(o.value for o in INT4_OPS)} layers, not {node.op.value}"
    return None


def _check_int4(node: Node) -> None:
    why = _int4_obstacle(node)
    if why:
        raise UserError(f"{node.where()}: {why}; keep its weights int8")
    fmt = node.attrs.get("weight_format", "dense")
    if fmt != "dense":
        raise UserError(f"{node.where()} has {fmt} weights (pruning/clustering); int4 weights are stored packed "
                        "dense: use one or the other for this layer")


def tensor_bits(graph: Graph) -> dict[str, int]:
    """Activation tensor -> 8 or 16, from each node's out_bits (FOLLOW_OPS inherit their input's)."""
    bits = {name: graph.input_bits for name in graph.inputs}
    for node in graph.nodes:
        if node.op in FOLLOW_OPS:
            b = bits[node.inputs[0]]
        elif node.op in CHOOSABLE_OPS:
            b = int(node.attrs.get("out_bits", 8))
        else:
            b = 8
        for out in node.outputs:
            bits[out] = b
    return bits


def check_bits(graph: Graph, bits: dict[str, int]) -> None:
    """Refuse int16 where the kernels or the C API need int8, naming the layer to change."""
    for node in graph.nodes:
        wide_in = [t for t in node.inputs if bits.get(t, 8) == 16]
        if node.op in INT8_INPUT_OPS and wide_in:
            raise UserError(f"{node.where()} computes in int8 only ({_int8_reason(node)}), but its input is int16: "
                            f"keep {_origin(graph, wide_in[0])} int8")
        if node.attrs.get("weight_bits") == 4 and (wide_in or bits[node.outputs[0]] == 16):
            raise UserError(f"{node.where()} has int4 weights, whose kernels take int8 activations only; keep it "
                            f"and its producer int8 (or give it int8 weights: --precision {node.name}=int8)")
        fmt = node.attrs.get("weight_format", "dense")
        if fmt != "dense" and (wide_in or bits[node.outputs[0]] == 16):
            raise UserError(f"{node.where()} has {fmt} weights, whose kernels take int8 activations only; "
                            "keep it and its producer int8, or store its weights dense")
    for out in graph.outputs:
        if bits[out] == 16 and out in graph.inputs:
            raise UserError("the model output is its input; it stays int8")
        if bits[out] == 16:
            raise UserError(f"model output %{out} would be int16, but model outputs are int8 (the C API); "
                            f"keep {_origin(graph, out)} int8")


def _int8_reason(node: Node) -> str:
    return "256-entry tables" if has(node.op, Trait.TABLE) else "it has no int16 kernel"


def _origin(graph: Graph, tensor: str) -> str:
    """The layer whose precision decides the tensor's type (through pools/clamps/reshapes)."""
    node: Node | None = graph.producer(tensor)
    while node is not None and node.op in FOLLOW_OPS:
        node = graph.producer(node.inputs[0])
    return node.where() if node is not None else "the model input"


def candidates(graph: Graph) -> list[str]:
    """Names ('input' or layers) that can be raised to int16 on their own without breaking check_bits."""
    result = []
    if graph.input_bits == 8:
        graph.input_bits = 16
        try:
            check_bits(graph, tensor_bits(graph))
            result.append(INPUT)
        except UserError:
            pass
        finally:
            graph.input_bits = 8
    for node in graph.nodes:
        if node.op not in CHOOSABLE_OPS or node.attrs.get("out_bits", 8) == 16:
            continue
        node.attrs["out_bits"] = 16
        try:
            check_bits(graph, tensor_bits(graph))
            result.append(node.name)
        except UserError:
            pass
        finally:
            del node.attrs["out_bits"]
    return result
