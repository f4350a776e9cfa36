"""PyTorch -> qgen IR through torch.export.

One handler per aten op, looked up in a table keyed by the op itself (never by name substrings).
Activations are converted from PyTorch's NCHW to qgen's channels-last (H, W, C); weights are permuted
to match, including the columns of a Linear that reads a flattened image.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import UserError
from ..ir import Graph, Node, Op, Tensor
from ..ops import supported_torch
from ..ops.matmul import MAX_RANK as MAX_TRANSPOSE_RANK
from . import layout, masks
from .layout import Layout

aten = torch.ops.aten


class InputShapeWarning(UserWarning):
    """--input-shape given but not used: the model brings its own example input or fixed shape."""


def load_model(target: str, input_shape: tuple[int, ...] | None = None) -> tuple[Any, torch.Tensor | None]:
    """Resolve a CLI model target: `model.pt2`, `file.py:factory` or `package.module:factory`.

    Returns (nn.Module or ExportedProgram, example input or None).
    """
    if target.endswith(".pt2"):
        path = Path(target)
        if not path.is_file():
            raise UserError(f"model file '{target}' does not exist")
        import logging
        import zipfile

        hint = "Save it with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')."
        if not zipfile.is_zipfile(path):
            raise UserError(f"cannot read '{target}': not a torch.export archive (corrupted or another format). {hint}")
        torch_log = logging.getLogger("torch.export")
        level = torch_log.level
        torch_log.setLevel(logging.CRITICAL)  # torch logs its own traceback before raising
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises many types for a bad archive
            raise UserError(f"cannot read '{target}' as a torch.export program ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}). Save it with "
                            "torch.export.save(torch.export.export(model, (x,)), 'model.pt2').") from None
        finally:
            torch_log.setLevel(level)
        saved = _program_input_shape(program)
        if input_shape is not None and saved is not None and saved != tuple(input_shape):
            warnings.warn(f"--input-shape {','.join(map(str, input_shape))} is ignored: '{target}' was exported "
                          f"with input shape {','.join(map(str, saved))}", InputShapeWarning, stacklevel=2)
        return program, None
    if ":" not in target:
        raise UserError(f"model '{target}': give a saved program 'model.pt2' or a factory "
                        "'file.py:make_model' / 'package.module:make_model'")
    where, factory_name = target.rsplit(":", 1)
    with _script_dir_on_path(where):  # `from layers import block` beside model.py works, as for a script
        module = _import(where)
        factory = getattr(module, factory_name, None)
        if factory is None or not callable(factory):
            raise UserError(f"'{where}' has no callable '{factory_name}'")
        try:
            made = factory()
        except SystemExit as exc:
            raise UserError(f"calling {target}() called sys.exit({exc.code!r}); a factory must return the "
                            "model (or a (module, example_input) pair), not exit") from None
        except Exception as exc:
            raise UserError(f"calling {target}() failed: {type(exc).__name__}: {exc}") from None
    example = None
    if isinstance(made, tuple) and len(made) == 2:
        made, example = made
    if not isinstance(made, torch.nn.Module):
        raise UserError(f"{target}() returned {type(made).__name__}, expected a torch.nn.Module "
                        "(or a (module, example_input) pair)")
    if example is not None and input_shape is not None:
        shown = tuple(example.shape) if hasattr(example, "shape") else None
        if shown != tuple(input_shape):
            warnings.warn(f"--input-shape {','.join(map(str, input_shape))} is ignored: {target}() returns its "
                          f"own example input (shape {','.join(map(str, shown)) if shown is not None else '?'})",
                          InputShapeWarning, stacklevel=2)
    if example is None:
        if input_shape is None:
            raise UserError(f"{target}: pass --input-shape (e.g. 1,1,8,8) or return (model, example_input)")
        example = torch.zeros(input_shape)
    return made, example


def _program_input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    """The shape of an exported program's first user input (None if it is not a plain tensor)."""
    try:
        name = program.graph_signature.user_inputs[0]
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
        return tuple(int(d) for d in node.meta["val"].shape)
    except Exception:  # noqa: BLE001 - symbolic dims, no inputs: nothing to compare
        return None


class _script_dir_on_path:
    """While loading `file.py`, its directory comes first on sys.path, as Python does for a script, so that
    it can import its siblings; afterwards sys.path is restored and the siblings it imported are forgotten
    (another model's `layers.py` must not be taken for this one's)."""

    def __init__(self, where: str):
        self.dir = str(Path(where).resolve().parent) if where.endswith(".py") else None

    def __enter__(self):
        if self.dir is not None:
            self.saved_path = list(sys.path)
            self.saved_modules = set(sys.modules)
            sys.path.insert(0, self.dir)
        return self

    def __exit__(self, *exc) -> None:
        if self.dir is None:
            return
        sys.path[:] = self.saved_path
        def sibling(name: str) -> bool:  # a new top-level module from the script's directory, or its submodule
            top = name.split(".")[0]
            file = getattr(sys.modules.get(top), "__file__", None)
            return (top not in self.saved_modules and not top.startswith("qgen_user_") and bool(file)
                    and Path(file).resolve().is_relative_to(self.dir))

        for name in [n for n in set(sys.modules) - self.saved_modules if sibling(n)]:
            del sys.modules[name]


def _import(where: str):
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UserError(f"model file '{where}' does not exist")
        name = f"qgen_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            raise UserError(f"importing '{where}' called sys.exit({exc.code!r}); guard script code with "
                            "`if __name__ == \"__main__\":`") from None
        except Exception as exc:
            raise UserError(f"importing '{where}' failed: {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(where)
    except SystemExit as exc:
        raise UserError(f"importing module '{where}' called sys.exit({exc.code!r}); guard script code with "
                        "`if __name__ == \"__main__\":`") from None
    except Exception as exc:
        raise UserError(f"cannot import module '{where}': {type(exc).__name__}: {exc}") from None


def from_module(model: torch.nn.Module, example: torch.Tensor) -> Graph:
    """Export an nn.Module in eval mode with a fixed-shape example input and lower it. The caller's module
    keeps its training flags (every submodule's)."""
    import logging

    from .torch_spellings import as_float32, forward_arity_error, scripted_program

    model = as_float32(model)  # .half() / .double(): a float32 copy
    if isinstance(model, torch.jit.ScriptModule):  # torch.jit.script / trace / jit.load: converted by torch
        return from_exported_program(scripted_program(model, example), source=model.original_name,
                                     modules=dict(model.named_modules()))
    training = {m: m.training for m in model.modules()}
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)  # torch logs a traceback for a shape error before raising it
    try:
        model.eval()
        with warnings.catch_warnings():  # torch.export on nn.GRU/LSTM/RNN: "_flat_weights ... assigned during export"
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
            program = torch.export.export(model, (example,))
    except SystemExit as exc:
        raise UserError(f"{type(model).__name__}.forward called sys.exit({exc.code!r}) while torch.export traced "
                        "it; the model's forward must return its output") from None
    except Exception as exc:
        mismatch = forward_arity_error(model) or _shape_mismatch(model, example)
        if mismatch:
            raise UserError(mismatch) from None
        msg = str(exc).strip().splitlines()
        raise UserError(f"torch.export failed on {type(model).__name__}: {type(exc).__name__}: "
                        f"{msg[0] if msg else ''}. qgen needs a model torch.export can trace with a fixed "
                        "input shape (no data-dependent control flow).") from None
    finally:
        fake_log.setLevel(level)
        for m, flag in training.items():
            m.training = flag
    return from_exported_program(program, source=type(model).__name__, modules=dict(model.named_modules()))


def _expected_input(module: torch.nn.Module) -> str | None:
    """What a layer expects of its input, e.g. '1 input channel (dim 1)', or None for other layers."""
    def count(n: int, what: str) -> str:
        return f"{n} {what}{'' if n == 1 else 's'}"

    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)):
        return f"{count(module.in_channels, 'input channel')} (dim 1)"
    if isinstance(module, torch.nn.Linear):
        return f"{count(module.in_features, 'input feature')} (last dim)"
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return f"{count(module.num_features, 'channel')} (dim 1)"
    return None


def _shape_mismatch(model: torch.nn.Module, example: torch.Tensor) -> str | None:
    """After torch.export failed: run the model eagerly; if a Conv/Linear/BatchNorm layer rejects the shape it
    gets, say which layer and what it expects (None: the failure is not such a shape mismatch)."""
    active: list[tuple[str, torch.nn.Module, tuple]] = []  # layers entered and not yet left
    entered: list[str] = []
    hooks = []

    def enter(mod, args, name):
        active.append((name, mod, args))
        entered.append(name)

    for name, module in model.named_modules():
        if _expected_input(module) is not None:
            hooks.append(module.register_forward_pre_hook(lambda mod, args, name=name: enter(mod, args, name)))
            hooks.append(module.register_forward_hook(lambda mod, args, out: active.pop() and None))  # keep out
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # noqa: BLE001 - whatever the layer raised, we describe it ourselves
        if not active:
            return None
        name, module, args = active[-1]
        got = list(args[0].shape) if args and isinstance(args[0], torch.Tensor) else "?"
        where = "the model's first layer" if name == entered[0] else "layer"
        return (f"the input shape {list(example.shape)} does not fit the model: {where} '{name or type(model).__name__}' "
                f"({type(module).__name__}) expects {_expected_input(module)} but gets an input of shape {got}. "
                "Give --input-shape (or an example input) of the shape the model was trained on, batch first, "
                "e.g. 1,C,H,W or 1,F")
    finally:
        for h in hooks:
            h.remove()
    return None


# ---------------------------------------------------------------------------------- lowering


class _Lowering:
    def __init__(self, program: torch.export.ExportedProgram, source: str, modules: dict | None = None):
        self.program = program
        self.modules = modules or {}  # module path -> nn.Module (from_module), for error messages
        self.graph = Graph(tensors={}, nodes=[], inputs=[], outputs=[], source=source)
        self.env: dict[str, Any] = {}  # fx node name -> IR tensor name, or a python constant
        # fx node name -> where its PyTorch elements lie in its IR tensor's buffer (frontend/layout.py);
        # permute/transpose/view only change this, a TRANSPOSE copy is made where an op needs a layout
        self.lay: dict[str, Layout] = {}
        self.canon: dict[str, str] = {}  # fx node name -> its IR tensor in the canonical layout (made once)
        self.parts: dict[str, tuple] = {}  # chunk/split/unbind node -> (input, dim, [(start, length)], squeeze)
        self.used_names: set[str] = set()
        # fx node name -> the name its functional spelling would get (`relu__1` -> `relu_1`), so that the
        # in-place and functional spellings of an op name their IR node and tensor alike
        self.fx_names: dict[str, str] = {}
        # fx node name -> (value, Layout or None) lowered ahead by a producer that reads its users (a recurrent
        # layer builds only what its getitems, h_n[k] and out[:, -1] read: frontend/torch_recurrent.py)
        self.ready: dict[str, tuple[Any, Layout | None]] = {}
        self.cells: dict[str, Any] = {}  # cell step fx node name -> its unrolled chain (frontend/torch_cells.py)
        self.masked: dict[str, np.ndarray] = {}  # fx node -> keep mask pending for its softmax (frontend/masks.py)

    # -- helpers
    def const(self, base: str, array: np.ndarray) -> str:
        name = self.graph.fresh_name(base)
        self.graph.tensors[name] = Tensor(name, tuple(array.shape), "float32", data=np.asarray(array, np.float64))
        return name

    def act(self, name: str, shape: tuple[int, ...]) -> str:
        name = self.graph.fresh_name(name)
        self.graph.tensors[name] = Tensor(name, tuple(int(s) for s in shape))
        return name

    def node_name(self, fx_node) -> str:
        stack = fx_node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        fx_name = self.fx_names.get(fx_node.name, fx_node.name)
        name = path or fx_name
        if name in self.used_names:
            name = f"{name}.{fx_name}" if path else name
        self.used_names.add(name)
        return name

    def add(self, fx_node, op: Op, inputs: list[str], out_shape: tuple[int, ...], **attrs) -> str:
        out = self.act(self.fx_names.get(fx_node.name, fx_node.name), out_shape)
        self.graph.nodes.append(Node(self.node_name(fx_node), op, inputs, [out], attrs, source_of(fx_node)))
        return out

    # -- layouts (frontend/layout.py)
    def raw(self, arg) -> tuple[str, Layout]:
        """An activation as it lies: (its IR tensor, its Layout), no copy."""
        return self.env[arg.name], self.lay[arg.name]

    def bind(self, fx_node, name: str, layout: Layout) -> str:
        """Record that fx_node's value is IR tensor `name` holding its elements in `layout`."""
        self.lay[fx_node.name] = layout
        return name

    def _inserted(self, base: str, op: Op, x: str, out_shape: tuple[int, ...], source: str, **attrs) -> str:
        out = self.act(base, out_shape)
        name = base
        i = 1
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        self.graph.nodes.append(Node(name, op, [x], [out], attrs, source))
        return out

    def alias(self, x: str, shape: tuple[int, ...], source: str = "") -> str:
        """`x` viewed with IR shape `shape` (same bytes: a RESHAPE the planner aliases, no code)."""
        shape = tuple(int(s) for s in shape)
        if self.shape_of(x) == shape:
            return x
        return self._inserted(f"{x}_as", Op.RESHAPE, x, shape, source, shape=shape)

    def relayout(self, x: str, src: Layout, dst: Layout, shape: tuple[int, ...], source: str = "") -> str:
        """IR tensor `x` holding layout `src` copied into layout `dst` (one TRANSPOSE; none if the bytes already
        lie so), viewed with IR shape `shape`."""
        plan = layout.transpose_plan(src, dst)
        if plan is None:  # the two split some dim incompatibly: through the canonical layout
            mid = layout.canonical(src.sizes)
            x = self.relayout(x, src, mid, layout.canonical_shape(src.sizes), source)
            src, plan = mid, layout.transpose_plan(mid, dst)
        in_shape, perm, out_shape = plan
        if perm == tuple(range(len(perm))):
            return self.alias(x, shape, source)
        if len(perm) > MAX_TRANSPOSE_RANK:
            raise UserError(f"changing the layout of '{x}' {list(src.sizes)} needs a {len(perm)}-axis transpose; "
                            f"qgen supports up to {MAX_TRANSPOSE_RANK}. Reshape in fewer steps.")
        y = self._inserted(f"{x}_t", Op.TRANSPOSE, self.alias(x, in_shape, source), out_shape, source,
                           perm=perm)
        return self.alias(y, shape, source)

    def pair(self, fx_node, a, b) -> tuple[str, str, Layout]:
        """Two activations of the same sizes in one layout, for a binary element-wise op: (a's IR tensor, b's
        IR tensor of the same IR shape, their layout). No copy if they lie alike, or if one is a Linear's
        output read only here (its weight rows are permuted to the other's order: the layout of `x +
        Linear(flatten(x))` is free); else the one not in the canonical layout is copied into it."""
        (ai, la), (bi, lb) = self.raw(a), self.raw(b)
        if la != lb:
            for fx, other in ((a, lb), (b, la)):
                if self._reorder_linear(fx, other):
                    (ai, la), (bi, lb) = self.raw(a), self.raw(b)
                    break
        if la != lb:  # one copy: into the canonical layout if one lies so (later ops want it), else into a's
            if lb == layout.canonical(lb.sizes):
                ai, la = self.value_in(a, lb, self.shape_of(bi)), lb
            else:
                bi = self.value_in(b, la, self.shape_of(ai))
        return ai, self.alias(bi, self.shape_of(ai), source_of(fx_node)), la

    def _reorder_linear(self, fx, want: Layout) -> bool:
        """If fx is a Linear's (1, F) output that nothing else reads yet, permute its output rows so that it
        lies in layout `want`; True if done."""
        name = self.env.get(fx.name)
        producer = next((n for n in reversed(self.graph.nodes) if name in n.outputs), None)
        if (producer is None or producer.op is not Op.LINEAR or len(fx.users) != 1 or len(want.sizes) != 2
                or self.lay[fx.name] != layout.canonical(want.sizes)):
            return False
        rows = want.torch_index()  # row j computes the feature that layout `want` holds at position j
        for t in producer.inputs[1:3]:
            self.graph.tensors[t].data = self.graph.tensors[t].data[rows]
        self.lay[fx.name] = want
        return True

    def value_in(self, arg, dst: Layout, shape: tuple[int, ...]) -> str:
        """Activation `arg` in layout `dst` with IR shape `shape` (copied if it lies otherwise)."""
        x, src = self.raw(arg)
        return self.relayout(x, src, dst, shape, source_of(arg))

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.graph.tensors[name].shape

    def value(self, arg):
        """An argument's value; an activation in qgen's canonical layout ((H, W, C) images, (1, L, C)
        sequences, (F,) vectors), copied into it once if it lies otherwise."""
        if isinstance(arg, torch.fx.Node):
            if arg.name not in self.lay:
                return self.env[arg.name]
            if arg.name not in self.canon:
                sizes = self.lay[arg.name].sizes
                self.canon[arg.name] = self.value_in(arg, layout.canonical(sizes), layout.canonical_shape(sizes))
            return self.canon[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def param(self, fx_node, arg) -> np.ndarray | None:
        value = self.value(arg)
        if value is None:
            return None
        if isinstance(value, np.ndarray):
            return value
        raise UserError(f"{fx_node.target} '{self.node_name(fx_node)}' ({source_of(fx_node)}): expected a "
                        "parameter (weight/bias) but got a computed tensor; qgen needs constant weights.")

    # -- main loop
    def run(self) -> Graph:
        sig = self.program.graph_signature
        state = dict(self.program.state_dict)
        consts = dict(getattr(self.program, "constants", {}) or {})
        lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                  **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
        _cells.prepare(self)  # nn.LSTMCell & co. unrolled in forward: found before lowering (torch_cells.py)
        for fx_node in self.program.graph.nodes:
            if fx_node.op == "placeholder":
                if fx_node.name in lifted:
                    key = lifted[fx_node.name]
                    tensor = state[key] if key in state else consts[key]
                    self.env[fx_node.name] = tensor.detach().double().numpy()
                else:
                    self.placeholder(fx_node)
            elif fx_node.op == "call_function" and fx_node.name in self.ready:
                self.env[fx_node.name], lay = self.ready.pop(fx_node.name)
                if lay is not None:
                    self.lay[fx_node.name] = lay
            elif fx_node.op == "call_function" and masks.foldable(self, fx_node):  # a mask built from constants
                self.env[fx_node.name] = masks.fold(self, fx_node)
            elif fx_node.op == "call_function":
                handler = HANDLERS.get(fx_node.target)
                functional = _functional_of(fx_node.target) if handler is None else None
                if functional is not None and functional in HANDLERS:
                    handler = HANDLERS[functional]
                    packet = fx_node.target.overloadpacket.__name__
                    if fx_node.name.startswith(packet):
                        self.fx_names[fx_node.name] = packet[:-1] + fx_node.name[len(packet):]
                if handler is None:
                    raise unsupported(fx_node, self.modules)
                result = handler(self, fx_node)
                self.env[fx_node.name] = result
                sizes = _torch_sizes(fx_node)
                if (fx_node.name not in self.lay and isinstance(result, str) and sizes is not None
                        and not self.graph.tensors[result].is_const):
                    self.lay[fx_node.name] = layout.canonical(sizes)  # handlers that use lw.add: canonical
            elif fx_node.op == "output":
                outs = fx_node.args[0]
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                for o in outs:
                    sizes = _torch_sizes(o) if isinstance(o, torch.fx.Node) else None
                    if sizes is not None and not (len(sizes) in LAYOUTS and sizes[0] == 1):
                        squeezed = " (the batch dim squeezed away? x.squeeze() drops it from a batch of one: use " \
                            "torch.flatten(x, 1) or x.squeeze(-1))" if len(sizes) < 2 else ""
                        raise UserError(f"model output '{o.name}' has shape {list(sizes)}{squeezed}; qgen returns "
                                        "(1, C, H, W), (1, C, L) or (1, F) outputs. Reshape it to one of these before "
                                        "returning.")
                    if sizes is not None and len(sizes) == 3 and o.name in self.lay and _time_major(self.lay[o.name]):
                        # a sequence lying (L, C) (a recurrent layer's output): returned as it lies, io_layout nlc
                        name = self.alias(self.env[o.name], (1, sizes[1], sizes[2]), source_of(o))
                        self.graph.outputs.append(name)
                        self.graph.io_layout[name] = "nlc"
                        continue
                    name = self.value(o)  # in the output convention (a copy if it lies otherwise)
                    if not isinstance(name, str):
                        raise UserError("model output is a constant; qgen compiles computed outputs only")
                    self.graph.outputs.append(name)
                    val = o.meta.get("val") if isinstance(o, torch.fx.Node) else None
                    self.graph.io_layout[name] = LAYOUTS.get(len(val.shape) if val is not None else 2, "nf")
            else:
                raise UserError(f"unsupported FX node kind '{fx_node.op}' ({fx_node.name})")
        if not self.graph.inputs:
            raise UserError("the model has no tensor input")
        return self.graph

    def placeholder(self, fx_node) -> None:
        val = fx_node.meta.get("val")
        shape = tuple(val.shape)
        if any(not isinstance(s, int) for s in shape):
            raise UserError(f"input '{fx_node.name}' has a dynamic shape {shape}; qgen compiles fixed shapes. "
                            "Export again without dynamic_shapes (torch.export.export(model, (x,))), or "
                            "compile the model's factory with --input-shape.")
        if self.graph.inputs:
            raise UserError(f"the model has more than one input ('{self.graph.inputs[0]}', '{fx_node.name}'); "
                            f"qgen compiles single-input models{_cells.state_input_hint(fx_node, self.modules)}")
        if len(shape) == 3 and shape[0] != 1 and shape[1] == 1:
            from .torch_recurrent import KINDS

            if any(u.target in KINDS for u in fx_node.users):  # (T, 1, F) straight into a seq-first GRU/LSTM
                raise UserError(f"input '{fx_node.name}' has shape {list(shape)}, sequence first; qgen's inputs are "
                                "batch first (1, T, F): give the model a (1, T, F) input and call the recurrent "
                                "layer with x.transpose(0, 1) inside forward, or construct it with batch_first=True")
        if len(shape) not in (2, 3, 4) or shape[0] != 1:
            raise UserError(f"input '{fx_node.name}' has shape {list(shape)}; qgen supports (1, C, H, W) "
                            "images, (1, C, L) sequences and (1, F) vectors with batch size 1")
        time_major = len(shape) == 3 and _wants_time_major(fx_node)
        name = self.act(fx_node.name, (1, shape[1], shape[2]) if time_major else ir_shape_of(shape))
        self.graph.inputs.append(name)
        self.graph.io_layout[name] = "nlc" if time_major else LAYOUTS[len(shape)]
        self.env[fx_node.name] = name
        self.lay[fx_node.name] = layout.from_order(shape, (0, 1, 2)) if time_major else layout.canonical(shape)


# PyTorch layout of a model input / output: "nchw" (IR (H, W, C)), "ncl" (IR (1, L, C)), "nf"; a 3-D tensor
# whose first use reads time-major features (a batch_first recurrent layer, x.transpose(1, 2) before a Conv1d)
# is "nlc": PyTorch (1, L, C) is IR (1, L, C), no transpose at the boundary
LAYOUTS = {2: "nf", 3: "ncl", 4: "nchw"}


def _time_major(lay: Layout) -> bool:
    """A 3-D (1, L, C) value lying row-major (C innermost) and not in the canonical (C, L) order."""
    return lay == layout.from_order(lay.sizes, (0, 1, 2)) and lay != layout.canonical(lay.sizes)


def _wants_time_major(fx_node) -> bool:
    """Every use of a (1, L, C) input reads it with C innermost: a batch_first recurrent layer, or a swap of
    L and C (x.transpose(1, 2), x.permute(0, 2, 1): a Conv1d over the features), or a swap of batch and L
    (x.transpose(0, 1)) that feeds seq-first recurrent layers only."""
    from .torch_recurrent import KINDS

    def swaps(u, dims) -> bool:
        if u.target in (aten.transpose.int, aten.swapaxes.default, aten.swapdims.default):
            return {int(u.args[1]) % 3, int(u.args[2]) % 3} == set(dims)
        if u.target is aten.permute.default:
            perm = [int(p) % 3 for p in u.args[1]]
            return perm == [0, 1, 2][:min(dims)] + [max(dims), min(dims)] + [0, 1, 2][max(dims) + 1:]
        return False

    def reads(u, node, batch_first: bool) -> bool:
        if u.target in KINDS:
            flag = u.args[8] if len(u.args) > 8 else False
            return u.args[0] is node and bool(flag) == batch_first
        return _cells.reads_steps(u, node, 1 if batch_first else 0)  # x[:, t] into unrolled nn.LSTMCell steps

    users = list(fx_node.users)
    return bool(users) and all(
        reads(u, fx_node, True) or swaps(u, (1, 2))
        or (swaps(u, (0, 1)) and u.users and all(reads(v, u, False) for v in u.users)) for u in users)


def _torch_sizes(fx_node) -> tuple[int, ...] | None:
    """PyTorch sizes (batch included) of a node's (first) tensor value; None if not a fixed-shape tensor."""
    val = fx_node.meta.get("val")
    if isinstance(val, (list, tuple)):
        val = val[0] if val else None
    if not isinstance(val, torch.Tensor) or any(not isinstance(d, int) for d in val.shape):
        return None
    return tuple(int(d) for d in val.shape)


def ir_shape_of(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch (1, C, H, W) / (1, C, L) / (1, F) -> qgen (H, W, C) / (1, L, C) / (F,)."""
    if len(torch_shape) == 4:
        return (torch_shape[2], torch_shape[3], torch_shape[1])
    if len(torch_shape) == 3:
        return (1, torch_shape[2], torch_shape[1])
    return tuple(torch_shape[1:])


def ir_axis(torch_dim: int, rank: int) -> int:
    """The IR axis of a PyTorch dimension (batch is dim 0 in PyTorch, absent in the IR)."""
    d = torch_dim % rank
    if d == 0:
        raise ValueError("batch dimension")
    if rank == 4:
        return {1: 2, 2: 0, 3: 1}[d]
    if rank == 3:
        return {1: 2, 2: 1}[d]
    return 0


def source_of(fx_node) -> str:
    """'model.py:42' for the innermost user frame of the node's stack trace (skipping torch itself)."""
    return source_of_trace(fx_node.meta.get("stack_trace") or "")


def source_of_trace(trace: str) -> str:
    """'model.py:42': the innermost frame of a Python stack trace that is not inside torch."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    for path, line in reversed(frames):  # innermost user frame: the layer call site in forward()
        if "/torch/" not in path.replace("\\", "/"):
            return f"{Path(path).name}:{line}"
    return ""


SUPPORTED = supported_torch()  # generated from the op table (codegen/ops)


def _module_of(fx_node) -> tuple[str, str] | None:
    """(path, class path) of the innermost module a node was traced in, or None: the model's own forward."""
    stack = fx_node.meta.get("nn_module_stack") or {}
    path, cls = list(stack.values())[-1] if stack else ("", "")
    return (path, cls) if path else None


def describe(fx_node, modules: dict | None = None) -> str:
    """How the user wrote the layer a node comes from: "nn.GRU 'rnn' (GRU(10, 16, batch_first=True)) at
    model.py:6" — the module, its constructor values when the module object is at hand (a .pt2 program keeps
    only its class), the call site; never a tensor torch.export made up (the implicit `aten.zeros` state of a
    GRU). Nodes of the model's own forward are named by their call site."""
    where = source_of(fx_node)
    at = f" at {where}" if where else ""
    module = _module_of(fx_node)
    if module is None:
        return f"'{fx_node.name}'{at}"
    path, cls = module
    name = cls.rsplit(".", 1)[-1]
    kind = f"nn.{name}" if cls.startswith("torch.nn.") else name
    obj = (modules or {}).get(path)
    shown = f" ({_one_line(repr(obj))})" if obj is not None and cls.startswith("torch.nn.") else ""
    return f"{kind} '{path}'{shown}{at}"


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def unsupported(fx_node, modules: dict | None = None) -> UserError:
    module = _module_of(fx_node)
    if module is not None and module[1].startswith("torch.nn."):  # a built-in layer: the layer is unsupported
        kind = "nn." + module[1].rsplit(".", 1)[-1]
        return UserError(f"{describe(fx_node, modules)}: qgen does not support {kind} (it lowers to "
                         f"{fx_node.target}). Supported: {SUPPORTED}. Replace the layer or open an issue.")
    return UserError(f"{describe(fx_node, modules)} uses {fx_node.target}, which qgen does not "
                     f"support. Supported: {SUPPORTED}. Replace the op or open an issue.")


def _functional_of(target) -> Any:
    """The one spelling normalisation: an in-place aten overload `aten.X_.Y` (`x.relu_()`,
    `nn.Hardswish(inplace=True)`, `nn.Dropout(inplace=True)`, `x.add_(y)`, `torch.relu_`...) lowers as its
    functional `aten.X.Y`. torch.export already points every later use of the mutated tensor at the in-place
    node's result, so the in-place op is the functional op. None: not an in-place aten overload."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return None
    name = target.overloadpacket.__name__
    args = target._schema.arguments
    if not name.endswith("_") or name.startswith("__") or not args:
        return None
    alias = args[0].alias_info
    if alias is None or not alias.is_write:
        return None
    packet = getattr(aten, name[:-1], None)
    return getattr(packet, target._overloadname, None) if packet is not None else None


def _err(lw: _Lowering, fx_node, message: str) -> UserError:
    """A refusal inside a handler: names the user's layer (its class, path, constructor values, call site)
    when the node comes from a module, else the op and its call site."""
    if _module_of(fx_node) is not None:
        return UserError(f"{describe(fx_node, lw.modules)}: {message}")
    where = source_of(fx_node)
    return UserError(f"{fx_node.target} '{lw.node_name(fx_node)}'{' (' + where + ')' if where else ''}: {message}")


# ---------------------------------------------------------------------------------- op handlers


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else (1, 1)
    return (int(v), int(v))


def _conv2d(lw: _Lowering, n) -> str:
    args = list(n.args) + [None] * (7 - len(n.args))
    x, w_arg, b_arg, stride, padding, dilation, groups = args[:7]
    stride = _pair(n.kwargs.get("stride", stride or 1))
    padding = n.kwargs.get("padding", padding if padding is not None else 0)
    dilation = _pair(n.kwargs.get("dilation", dilation or 1))
    groups = int(n.kwargs.get("groups", groups or 1))
    w = lw.param(n, w_arg)  # (Cout, Cin/groups, KH, KW)
    if isinstance(padding, str):
        pads = padding
    else:
        ph, pw = _pair(padding)
        pads = (ph, pw, ph, pw)
    return _conv_core(lw, n, lw.value(x), w, lw.param(n, b_arg), stride, pads, dilation, groups)


def _conv1d(lw: _Lowering, n) -> str:
    args = list(n.args) + [None] * (7 - len(n.args))
    x, w_arg, b_arg, stride, padding, dilation, groups = args[:7]
    w = lw.param(n, w_arg)[:, :, None, :]  # (Cout, Cin/groups, 1, K): a 1 x K image kernel
    padding = n.kwargs.get("padding", padding if padding is not None else 0)
    if not isinstance(padding, str):
        p = int(padding[0] if isinstance(padding, (list, tuple)) else padding)
        padding = (0, p, 0, p)
    stride = int((stride or [1])[0] if isinstance(stride, (list, tuple)) else stride or 1)
    dilation = int((dilation or [1])[0] if isinstance(dilation, (list, tuple)) else dilation or 1)
    return _conv_core(lw, n, lw.value(x), w, lw.param(n, b_arg), (1, stride), padding, (1, dilation),
                      int(groups or 1))


def _conv_core(lw: _Lowering, n, xin: str, w: np.ndarray, b, stride, pads, dilation, groups: int) -> str:
    h, wd, cin = lw.shape_of(xin)
    cout, _, kh, kw = w.shape
    dh, dw = (int(d) for d in dilation)
    if isinstance(pads, str):
        if pads == "valid":
            pads = (0, 0, 0, 0)
        elif pads == "same":  # PyTorch: total d*(k-1), the odd one on the bottom/right
            ph, pw = dh * (kh - 1), dw * (kw - 1)
            pads = (ph // 2, pw // 2, ph - ph // 2, pw - pw // 2)
        else:
            raise _err(lw, n, f"padding='{pads}' is not supported")
    attrs = {"dilation": (dh, dw)} if (dh, dw) != (1, 1) else {}
    if groups == 1:
        op = Op.CONV2D
    elif groups == cin and w.shape[1] == 1:
        op = Op.DEPTHWISE_CONV2D
    elif groups > 1 and cin % groups == 0 and cout % groups == 0:
        op, attrs["groups"] = Op.CONV2D, groups
    else:
        raise _err(lw, n, f"groups={groups} with {cin} input and {cout} output channels; qgen supports groups "
                          "that divide both (depthwise: groups=in_channels)")
    bias = b if b is not None else np.zeros(cout)
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // stride[0] + 1  # shape rule of ir.py, checked with torch
    ow = (wd + pads[1] + pads[3] - dw * (kw - 1) - 1) // stride[1] + 1
    _check_shape(lw, n, (oh, ow, cout))
    wname, bname = lw.const(f"{n.name}_w", w.transpose(0, 2, 3, 1)), lw.const(f"{n.name}_b", bias)
    return lw.add(n, op, [xin, wname, bname], (oh, ow, cout), stride=tuple(stride), padding=tuple(pads), **attrs)


def _check_shape(lw: _Lowering, n, ir_shape: tuple[int, ...]) -> None:
    val = n.meta.get("val")
    if val is None:
        return
    torch_shape = tuple(val.shape)
    if any(not isinstance(d, int) for d in torch_shape):
        raise _err(lw, n, f"dynamic shape {torch_shape}; qgen compiles fixed shapes")
    if ir_shape_of(torch_shape) != tuple(ir_shape):
        raise _err(lw, n, f"internal: shape {ir_shape} does not match torch's {torch_shape}")


def _linear(lw: _Lowering, n) -> str:
    x, w_arg = n.args[0], n.args[1]
    b_arg = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
    w = lw.param(n, w_arg)
    b = lw.param(n, b_arg)
    x_ir, lay = lw.raw(x)
    if len(lay.sizes) != 2 or lay.sizes[0] != 1:
        return _linear_nd(lw, n, x, w, b)
    # any element order (a flattened channels-last image): column j weighs the element held at position j
    xin = lw.alias(x_ir, (lay.sizes[1],), source_of(n))
    w = w[:, lay.torch_index()]
    bias = b if b is not None else np.zeros(w.shape[0])
    wname, bname = lw.const(f"{n.name}_w", w), lw.const(f"{n.name}_b", bias)
    return lw.add(n, Op.LINEAR, [xin, wname, bname], (w.shape[0],))


def _linear_nd(lw: _Lowering, n, x, w: np.ndarray, b) -> str:
    """Linear over the last dim of an N-D tensor ((1, L, D) -> (1, L, O)): a 1x1 CONV2D over the other dims'
    elements as pixels, the last dim innermost in the buffer (one copy first if it is not)."""
    lay = lw.lay[x.name]
    if lay.sizes[-1] != w.shape[1]:
        raise _err(lw, n, f"Linear with {w.shape[1]} inputs on a tensor of shape {list(lay.sizes)}")
    if lay.sizes[-1] > 1 and lay.innermost_dim() != len(lay.sizes) - 1:
        lay = layout.move_innermost(lay, -1)
    pixels, d, o = lay.size // lay.sizes[-1], lay.sizes[-1], w.shape[0]
    xin = lw.value_in(x, lay, (1, pixels, d))
    bias = b if b is not None else np.zeros(o)
    wname, bname = lw.const(f"{n.name}_w", w[:, None, None, :]), lw.const(f"{n.name}_b", bias)
    out = lw.add(n, Op.CONV2D, [xin, wname, bname], (1, pixels, o), stride=(1, 1), padding=(0, 0, 0, 0))
    if d == 1:  # the last dim was absent from the buffer: it is the innermost axis now
        sizes = lay.sizes[:-1] + (o,)
        new = layout.Layout(lay.phys + (o,) if o > 1 else lay.phys, lay.dims[:-1] + (((len(lay.phys),) if o > 1
                                                                                   else ()),))
        assert new.sizes == sizes
        return lw.bind(n, out, new)
    return lw.bind(n, out, layout.resize_dim(lay, -1, o))


def _matmul(lw: _Lowering, n) -> str:
    """torch.matmul / @ / bmm / mm of two activations (attention: q @ k^T, attn @ v): MATMUL with A (batch, M,
    K) and B (batch, N, K), K innermost in both; a metadata transpose of B (k.transpose(-2, -1)) is free, B
    lying (K, N) is copied once."""
    a, b = n.args[0], n.args[1]
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node) and a.name in lw.lay
            and b.name in lw.lay):
        raise _err(lw, n, "matmul with a constant matrix; qgen multiplies two activations here. Use nn.Linear "
                          "for a weight matrix.")
    sa, sb = lw.lay[a.name].sizes, lw.lay[b.name].sizes
    if len(sa) != len(sb) or len(sa) < 2 or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        raise _err(lw, n, f"matmul of shapes {list(sa)} and {list(sb)}; qgen supports (..., M, K) @ (..., K, N) "
                          "with equal leading dims (no broadcasting)")
    r = len(sa)
    batch, m, k, nn_ = int(np.prod(sa[:-2], dtype=np.int64)), sa[-2], sa[-1], sb[-1]
    from ..ops.matmul import MAX_K

    if k > MAX_K:
        raise _err(lw, n, f"matmul over K={k}; the int32 sums are exact up to K={MAX_K}")
    lead = tuple(range(r - 2))
    xa = lw.value_in(a, layout.from_order(sa, lead + (r - 2, r - 1)), (batch, m, k))
    xb = lw.value_in(b, layout.from_order(sb, lead + (r - 1, r - 2)), (batch, nn_, k))
    out = lw.add(n, Op.MATMUL, [xa, xb], (batch, m, nn_))
    return lw.bind(n, out, layout.from_order(_torch_sizes(n), tuple(range(r))))


def _weight_norm(lw: _Lowering, n) -> np.ndarray:
    """torch.nn.utils.weight_norm / parametrizations.weight_norm: w = g * v / ||v|| (the norm over every dim
    but `dim`; dim -1: the whole tensor), folded into the constant weight the conv or Linear then reads."""
    v, g = lw.value(n.args[0]), lw.value(n.args[1])
    dim = int(n.args[2]) if len(n.args) > 2 else int(n.kwargs.get("dim", 0))
    if not (isinstance(v, np.ndarray) and isinstance(g, np.ndarray)):
        raise _err(lw, n, "weight_norm of a computed tensor; qgen folds weight_norm of constant weight_v and "
                          "weight_g (parameters) into the weight. Keep g and v parameters of the layer.")
    axes = tuple(a for a in range(v.ndim) if dim == -1 or a != dim % v.ndim)
    norm = np.sqrt(np.sum(v * v, axis=axes, keepdims=True))
    return v * (g / norm)


def _steps(lw: _Lowering, n) -> Callable[..., Any]:
    """A decomposition's builder: step(suffix, aten_op, args, torch_sizes) lowers one scratch FX node (the user's
    program is not changed) through that op's handler, with n's call site and module for names and errors."""
    graph = torch.fx.Graph()

    def step(suffix: str, target, args, shape) -> torch.fx.Node:
        node = graph.create_node("call_function", target, args, {}, name=f"{n.name}_{suffix}")
        node.meta = {**n.meta, "val": torch.empty(shape, device="meta")}
        result = lw.env[node.name] = HANDLERS[target](lw, node)
        if node.name not in lw.lay and isinstance(result, str) and not lw.graph.tensors[result].is_const:
            lw.lay[node.name] = layout.canonical(tuple(shape))  # as run() records a handler that used lw.add
        return node
    return step


def _patches(lw: _Lowering, n, what: str, kernel, dilation, padding, stride, hw) -> tuple[int, int, int, int]:
    """F.unfold / F.fold of non-overlapping patches (kernel == stride, no padding or dilation: MobileViTv2's
    unfolding): (kh, kw, rows, cols) of patches; anything else is refused (overlapping windows sum or repeat)."""
    kh, kw = (int(k) for k in kernel)
    if [int(s) for s in stride] != [kh, kw] or any(int(d) != 1 for d in dilation) or any(int(p) for p in padding) \
            or hw[0] % kh or hw[1] % kw:
        raise _err(lw, n, f"{what}(kernel_size={list(kernel)}, dilation={list(dilation)}, padding={list(padding)}, "
                          f"stride={list(stride)}) over {hw[0]}x{hw[1]}; qgen supports non-overlapping patches "
                          "(stride == kernel_size, no padding or dilation, sizes that divide the image), a reshape. "
                          "Use a Conv2d for overlapping windows.")
    return kh, kw, hw[0] // kh, hw[1] // kw


def _im2col(lw: _Lowering, n) -> str:
    """F.unfold(x, k, stride=k) / nn.Unfold: (1, C, H, W) -> (1, C*kh*kw, L), a view and a permute (a layout
    change: one copy where the next op needs it), as x.reshape(1, C, H/kh, kh, W/kw, kw).permute(0, 1, 3, 5, 2, 4)."""
    x, kernel, dilation, padding, stride = n.args[:5]
    b, c, h, w = _torch_sizes(x)
    kh, kw, ph, pw = _patches(lw, n, "F.unfold", kernel, dilation, padding, stride, (h, w))
    step = _steps(lw, n)
    v = step("split", aten.view.default, (x, [b, c, ph, kh, pw, kw]), (b, c, ph, kh, pw, kw))
    p = step("order", aten.permute.default, (v, [0, 1, 3, 5, 2, 4]), (b, c, kh, kw, ph, pw))
    out = step("cols", aten.reshape.default, (p, [b, c * kh * kw, ph * pw]), (b, c * kh * kw, ph * pw))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _col2im(lw: _Lowering, n) -> str:
    """F.fold(x, (H, W), k, stride=k) / nn.Fold of non-overlapping patches: the inverse view and permute."""
    x, size, kernel, dilation, padding, stride = n.args[:6]
    b, ckk, _ = _torch_sizes(x)
    h, w = (int(s) for s in size)
    kh, kw, ph, pw = _patches(lw, n, "F.fold", kernel, dilation, padding, stride, (h, w))
    c = ckk // (kh * kw)
    step = _steps(lw, n)
    v = step("split", aten.view.default, (x, [b, c, kh, kw, ph, pw]), (b, c, kh, kw, ph, pw))
    p = step("order", aten.permute.default, (v, [0, 1, 4, 2, 5, 3]), (b, c, ph, kh, pw, kw))
    out = step("image", aten.reshape.default, (p, [b, c, h, w]), (b, c, h, w))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _glu(lw: _Lowering, n) -> str:
    """F.glu / nn.GLU: a * sigmoid(b) with (a, b) the halves of x along dim: two slices (no copy where a half is
    a contiguous run), a sigmoid table and a mul, as x.chunk(2, dim) written by hand."""
    x, dim = n.args[0], int(n.args[1]) if len(n.args) > 1 else int(n.kwargs.get("dim", -1))
    sizes = _torch_sizes(x)
    dim %= len(sizes)  # an odd size is refused by torch.export already
    half = sizes[dim] // 2
    shape = sizes[:dim] + (half,) + sizes[dim + 1:]
    step = _steps(lw, n)
    a = step("a", aten.slice.Tensor, (x, dim, 0, half), shape)
    b = step("b", aten.slice.Tensor, (x, dim, half, 2 * half), shape)
    gate = step("gate", aten.sigmoid.default, (b,), shape)
    out = step("out", aten.mul.Tensor, (a, gate), shape)
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _sdpa(lw: _Lowering, n) -> str:
    """F.scaled_dot_product_attention (nn.MultiheadAttention with need_weights=False, nn.TransformerEncoderLayer
    in eval): softmax(q @ k^T * scale) @ v, lowered as the matmul, scalar multiply and softmax nodes a user
    writing attention by hand gets (the same IR and C). A constant mask (is_causal, a bool or 0/-inf attn_mask, a
    constant key_padding_mask merged into it) makes the softmax a masked softmax (frontend/masks.py); a finite
    float attn_mask is added to the scores."""
    q, k, v = n.args[:3]
    names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    opts = {**{"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False},
            **dict(zip(names, n.args[3:])), **n.kwargs}
    if opts["enable_gqa"]:
        raise _err(lw, n, "grouped-query attention (enable_gqa=True); qgen supports equal heads in q, k and v")
    sq, sk = _torch_sizes(q), _torch_sizes(k)
    if sq is None or sk is None:
        raise _err(lw, n, "attention on inputs of unknown shape")
    scale = float(opts["scale"]) if opts["scale"] is not None else 1.0 / float(np.sqrt(sq[-1]))
    keep, bias = masks.sdpa_keep(lw, n, sq, sk, opts["attn_mask"], bool(opts["is_causal"]))
    step = _steps(lw, n)
    kt = step("kt", aten.transpose.int, (k, -2, -1), sk[:-2] + (sk[-1], sk[-2]))
    scores = sq[:-1] + (sk[-2],)
    s = step("scores", aten.matmul.default, (q, kt), scores)
    s = step("scaled", aten.mul.Tensor, (s, scale), scores)
    if bias is not None:  # a finite additive float mask
        s = step("bias", aten.add.Tensor, (s, bias), scores)
    if keep is not None:
        lw.masked[s.name] = keep
    p = step("softmax", aten._softmax.default, (s, -1, False), scores)
    out = step("out", aten.matmul.default, (p, v), _torch_sizes(n))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _batch_norm(lw: _Lowering, n) -> str:
    x, gamma, beta, mean, var = (n.args + (None,) * 5)[:5]
    if n.target is aten._native_batch_norm_legit_no_training.default:
        eps = n.args[6]
    else:
        if n.args[5]:
            raise _err(lw, n, "batch norm in training mode; call model.eval() before compiling")
        eps = n.args[7]
    x_ir, lay = lw.raw(x)
    order = None
    if len(lay.sizes) == 2:  # (1, F) in any element order: the per-feature parameters follow it
        xin, order = lw.alias(x_ir, (lay.sizes[1],), source_of(n)), lay.torch_index()
    else:
        xin = lw.value(x)
    c = lw.shape_of(xin)[-1]
    gamma = lw.param(n, gamma) if gamma is not None else np.ones(c)
    beta = lw.param(n, beta) if beta is not None else np.zeros(c)
    scale = gamma / np.sqrt(lw.param(n, var) + eps)
    shift = beta - lw.param(n, mean) * scale
    if order is not None:
        scale, shift = scale[order], shift[order]
    sname, tname = lw.const(f"{n.name}_scale", scale), lw.const(f"{n.name}_shift", shift)
    out = lw.add(n, Op.BATCH_NORM, [xin, sname, tname], lw.shape_of(xin))
    return lw.bind(n, out, lay) if order is not None else out


def _norm_affine(lw: _Lowering, n, w_arg, b_arg, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """gamma and beta of a layer/group norm (ones / zeros when absent), in PyTorch's shape `shape`."""
    gamma = lw.param(n, w_arg) if w_arg is not None else np.ones(shape)
    beta = lw.param(n, b_arg) if b_arg is not None else np.zeros(shape)
    return np.asarray(gamma, np.float64).reshape(shape), np.asarray(beta, np.float64).reshape(shape)


def _layer_norm(lw: _Lowering, n) -> str:
    """aten.layer_norm / native_layer_norm over the last len(normalized_shape) PyTorch dims. Those dims must
    be the innermost IR axes of the input as qgen holds it (any order among themselves: gamma and beta are
    permuted to the IR's order; the statistics do not depend on it)."""
    a = list(n.args) + [None] * (5 - len(n.args))
    x, norm_shape, w_arg, b_arg = a[0], tuple(int(s) for s in a[1]), a[2], a[3]
    eps = float(a[4] if a[4] is not None else n.kwargs.get("eps", 1e-5))
    torch_shape = tuple(int(s) for s in x.meta["val"].shape)
    rank, k, ir = len(torch_shape), len(norm_shape), layout.canonical_shape(torch_shape)
    gamma, beta = _norm_affine(lw, n, w_arg, b_arg, norm_shape)
    lay = lw.lay.get(x.name)
    if rank < 2 or (torch_shape[0] != 1 and (rank < 3 or lay is None)) or k >= rank:
        raise _err(lw, n, f"LayerNorm{list(norm_shape)} on an input of shape {list(torch_shape)}; qgen normalises "
                          "within one sample (batch 1, not over the batch dim)")
    dims = list(range(rank - k, rank))
    axes = [ir_axis(d, rank) for d in dims] if rank > 2 else [0]
    if lay is not None and rank > 2:  # the normalised dims innermost, row-major: a copy only if they lie otherwise
        inner = layout.move_dims_innermost(lay, dims)  # (a leading dim > 1, MobileViT's (B*P, N, C) patches: rows)
        if inner == lay or torch_shape[0] != 1 or sorted(axes) != list(range(len(ir) - len(set(axes)), len(ir))):
            span = int(np.prod(norm_shape))
            xin = lw.value_in(x, inner, (lay.size // span, span))
            gname, bname = lw.const(f"{n.name}_gamma", gamma.reshape(-1)), lw.const(f"{n.name}_beta", beta.reshape(-1))
            return lw.bind(n, lw.add(n, Op.LAYER_NORM, [xin, gname, bname], lw.shape_of(xin), axes=1, eps=eps),
                           inner)
    xin = lw.value(x)
    if sorted(axes) != list(range(len(ir) - len(set(axes)), len(ir))) or len(set(axes)) != len(axes):
        raise _err(lw, n, f"LayerNorm{list(norm_shape)} normalises PyTorch dims {dims} of {list(torch_shape)}, "
                          f"which qgen holds as IR axes {axes} of {list(ir)}, not its innermost ones. qgen "
                          "supports LayerNorm over the feature dim of (1, F), all of (1, C, L) / (1, C, H, W), "
                          "or the channels of a channels-last tensor; permute so that the normalised dims come "
                          "last in qgen's layout.")
    perm = np.argsort(axes)  # gamma's PyTorch dims in the IR's axis order
    gamma, beta = gamma.transpose(perm).reshape(-1), beta.transpose(perm).reshape(-1)
    order = getattr(lw, "flat_order", {}).get(xin)  # a flattened image in qgen's element order
    if order is not None:
        gamma, beta = gamma[order], beta[order]
    gname, bname = lw.const(f"{n.name}_gamma", gamma), lw.const(f"{n.name}_beta", beta)
    return lw.add(n, Op.LAYER_NORM, [xin, gname, bname], ir, axes=len(axes), eps=eps)


def _group_norm_core(lw: _Lowering, n, x, groups: int, w_arg, b_arg, eps: float, what: str) -> str:
    xin = lw.value(x)
    torch_shape = tuple(int(s) for s in x.meta["val"].shape)
    if len(torch_shape) not in (2, 3, 4) or torch_shape[0] != 1:
        raise _err(lw, n, f"{what} on an input of shape {list(torch_shape)}; qgen supports (1, C), (1, C, L) and "
                          "(1, C, H, W) with batch 1")
    c = torch_shape[1]
    if groups < 1 or c % groups:
        raise _err(lw, n, f"{what} with {groups} groups over {c} channels; the groups must divide the channels")
    if getattr(lw, "flat_order", {}).get(xin) is not None:
        raise _err(lw, n, f"{what} on a flattened image; apply it before flattening")
    gamma, beta = _norm_affine(lw, n, w_arg, b_arg, (c,))
    gname, bname = lw.const(f"{n.name}_gamma", gamma), lw.const(f"{n.name}_beta", beta)
    return lw.add(n, Op.GROUP_NORM, [xin, gname, bname], lw.shape_of(xin), groups=int(groups), eps=float(eps))


def _group_norm(lw: _Lowering, n) -> str:
    """aten.group_norm(x, G, weight, bias, eps) / native_group_norm(x, weight, bias, N, C, HxW, G, eps)."""
    a = list(n.args) + [None] * (8 - len(n.args))
    if n.target is aten.native_group_norm.default:
        return _group_norm_core(lw, n, a[0], int(a[6]), a[1], a[2], float(a[7]), "GroupNorm")
    eps = a[4] if a[4] is not None else n.kwargs.get("eps", 1e-5)
    return _group_norm_core(lw, n, a[0], int(a[1]), a[2], a[3], float(eps), "GroupNorm")


def _instance_norm(lw: _Lowering, n) -> str:
    """aten.instance_norm with input statistics: a group norm with one group per channel."""
    a = list(n.args) + [None] * (9 - len(n.args))
    if not a[5]:
        raise _err(lw, n, "InstanceNorm with track_running_stats in eval mode normalises with running statistics; "
                          "qgen supports InstanceNorm with input statistics (track_running_stats=False)")
    c = int(a[0].meta["val"].shape[1])
    return _group_norm_core(lw, n, a[0], c, a[1], a[2], float(a[7] if a[7] is not None else 1e-5), "InstanceNorm")


def _getitem(lw: _Lowering, n) -> Any:
    src, index = n.args
    if src.name in lw.parts:  # a part of chunk/split/unbind (torch.export lists every part: make the read ones)
        if not n.users:
            return None
        x, dim, ranges, squeeze = lw.parts[src.name]
        out = _slice_of(lw, n, x, dim, *ranges[index])
        return _squeezed(lw, n, out) if squeeze else out
    value = lw.value(src)
    if src.target is aten._native_batch_norm_legit_no_training.default:
        if index != 0:
            raise _err(lw, n, "uses batch-norm statistics outputs, which qgen does not support")
        return value
    if src.target in (aten.native_layer_norm.default, aten.native_group_norm.default):
        if index != 0:
            raise _err(lw, n, "uses the mean / rstd outputs of a layer or group norm, which qgen does not support")
        return value
    if src.target in VALUES_AND_INDICES:  # max pooling / max over a dim: the values, never the indices
        if index == 0:
            return value[0]
        if n.users:
            raise _err(lw, n, f"uses the indices output of {src.target}; qgen computes the values only")
        return None
    raise unsupported(n, lw.modules)


def _unary(lw: _Lowering, n, op: Op, **attrs) -> str:
    """An element-wise op of one activation: computed in whatever layout its input lies in (no copy)."""
    x_ir, lay = lw.raw(n.args[0])
    return lw.bind(n, lw.add(n, op, [x_ir], lw.shape_of(x_ir), **attrs), lay)


def _relu(lw: _Lowering, n) -> str:
    return _unary(lw, n, Op.RELU, lo=0.0, hi=None)


def _hardtanh(lw: _Lowering, n) -> str:
    lo = float(n.args[1]) if len(n.args) > 1 else -1.0
    hi = float(n.args[2]) if len(n.args) > 2 else 1.0
    return _unary(lw, n, Op.RELU, lo=lo, hi=hi)


def _clamp(lw: _Lowering, n) -> str:
    lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min")
    hi = n.args[2] if len(n.args) > 2 else n.kwargs.get("max")
    if n.target is aten.clamp_max.default:  # torch.clamp_max(x, hi), x.clamp_max_(hi)
        lo, hi = None, lo
    if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        raise _err(lw, n, "clamp bounds must be numbers")
    return _unary(lw, n, Op.RELU, lo=None if lo is None else float(lo), hi=None if hi is None else float(hi))


def _pool_out(size: int, k: int, s: int, pad: int, ceil_mode: bool) -> tuple[int, int]:
    """PyTorch's pooling output size along one axis and the end padding that gives it in qgen's shape rule.
    ceil_mode: the last window must start inside the input or the left padding; the part of a window that
    runs past the input (the extra end padding) is clipped away (codegen/ops/pool.py)."""
    out = (size + 2 * pad - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + pad:
        out -= 1
    return out, max(pad, (out - 1) * s + k - size - pad)


def _pool_common(lw: _Lowering, n, kernel, stride, padding, ceil_mode: bool,
                 count_include_pad: bool | None = None) -> tuple:
    """(input, IR attrs, output shape) of a max (count_include_pad None) or average pooling."""
    xin = lw.value(n.args[0])
    h, w, c = lw.shape_of(xin)
    kernel = _pair(kernel)
    stride = _pair(stride) if stride not in (None, [], ()) else kernel
    ph, pw = _pair(padding if padding is not None else 0)
    if 2 * ph > kernel[0] or 2 * pw > kernel[1]:
        raise _err(lw, n, f"padding {[ph, pw]} is more than half the kernel {list(kernel)}")
    oh, pb = _pool_out(h, kernel[0], stride[0], ph, ceil_mode)
    ow, pr = _pool_out(w, kernel[1], stride[1], pw, ceil_mode)
    attrs = {"kernel": kernel, "stride": stride, "padding": (ph, pw, pb, pr)}
    if count_include_pad is not None:  # the average's divisor counts the input and, if asked, the padding
        count_pad = (ph, pw, ph, pw) if count_include_pad else (0, 0, 0, 0)
        if count_pad != attrs["padding"]:
            attrs["count_pad"] = count_pad
    _check_shape(lw, n, (oh, ow, c))
    return xin, attrs, (oh, ow, c)


def _max_pool2d(lw: _Lowering, n) -> str:
    a = list(n.args) + [None] * (6 - len(n.args))
    if _pair(a[4] or 1) != (1, 1):
        raise _err(lw, n, "dilation is not supported for max pooling")
    xin, attrs, shape = _pool_common(lw, n, a[1], a[2], a[3], bool(a[5]))
    return lw.add(n, Op.MAXPOOL2D, [xin], shape, **attrs)


def _max_pool1d(lw: _Lowering, n) -> str:
    a = list(n.args) + [None] * (6 - len(n.args))
    if _pair(a[4] or 1) != (1, 1):
        raise _err(lw, n, "dilation is not supported for max pooling")
    xin, attrs, shape = _pool_common(lw, n, (1, _pair(a[1])[0]), (1, _pair(a[2])[0]) if a[2] else None,
                                     (0, _pair(a[3] or 0)[0]), bool(a[5]))
    return lw.add(n, Op.MAXPOOL2D, [xin], shape, **attrs)


def _avg_pool1d(lw: _Lowering, n) -> str:
    a = list(n.args) + [None] * (6 - len(n.args))
    count_include_pad = True if a[5] is None else bool(a[5])
    xin, attrs, shape = _pool_common(lw, n, (1, _pair(a[1])[0]), (1, _pair(a[2])[0]) if a[2] else None,
                                     (0, _pair(a[3] or 0)[0]), bool(a[4]), count_include_pad)
    return lw.add(n, Op.AVGPOOL2D, [xin], shape, **attrs)


def _avg_pool2d(lw: _Lowering, n) -> str:
    a = list(n.args) + [None] * (7 - len(n.args))
    count_include_pad = True if a[5] is None else bool(a[5])
    if a[6] is not None:
        raise _err(lw, n, "divisor_override is not supported")
    xin, attrs, shape = _pool_common(lw, n, a[1], a[2], a[3], bool(a[4]), count_include_pad)
    return lw.add(n, Op.AVGPOOL2D, [xin], shape, **attrs)


def adaptive_attrs(h: int, w: int, oh: int, ow: int) -> dict:
    """PyTorch's adaptive windows (start floor(i*H/OH), end ceil((i+1)*H/OH)) as uniform sliding windows
    where they are (kernel, stride, no padding: the fast kernels), else attrs adaptive=(OH, OW)."""
    kernel, stride = [], []
    for size, out in ((h, oh), (w, ow)):
        starts = [i * size // out for i in range(out)]
        sizes = {-(-(i + 1) * size // out) - s for i, s in enumerate(starts)}
        steps = {b - a for a, b in zip(starts, starts[1:])} or {max(sizes)}
        if len(sizes) != 1 or len(steps) != 1 or 0 in steps:  # enlarging (1 -> 2): windows repeat, stride 0
            return {"adaptive": (oh, ow)}
        kernel.append(sizes.pop())
        stride.append(steps.pop())
    return {"kernel": tuple(kernel), "stride": tuple(stride), "padding": (0, 0, 0, 0)}


def _adaptive_pool(op: Op):
    def handler(lw: _Lowering, n) -> Any:
        xin = lw.value(n.args[0])
        h, w, c = lw.shape_of(xin)
        size = n.args[1]
        if len(n.args[0].meta["val"].shape) == 3:  # (1, C, L): a 1 x L image
            oh, ow = 1, int(size[0] if isinstance(size, (list, tuple)) else size)
        else:
            oh, ow = size if isinstance(size, (list, tuple)) else (size, size)
            oh, ow = int(oh if oh is not None else h), int(ow if ow is not None else w)
        if op is Op.AVGPOOL2D:  # adaptive max returns (values, indices): no single shape to check
            _check_shape(lw, n, (oh, ow, c))
        out = _long_pool(lw, n, op, xin, oh, ow)
        if out is None:
            out = lw.add(n, op, [xin], (oh, ow, c), **adaptive_attrs(h, w, oh, ow))
        return out if op is Op.AVGPOOL2D else (out, None)  # max: (values, indices), _getitem picks
    return handler


def _long_pool(lw: _Lowering, n, op: Op, xin: str, oh: int, ow: int) -> str | None:
    """A global mean/max over more than 255 steps (x.mean(-1) of a (1, C, 1000) ECG window, AdaptiveAvgPool1d(1)
    over L=256): each output's window is a contiguous run of `length` pixels, so the (h, w, c) buffer is viewed
    (free) as (rows * a, b, c) with a * b = length, both <= 255 (the kernel's window fields), and pooled with one
    a x b window per output: the same cells, the same divisor, the same sum, so the same integers as one 1 x L
    window. None where there is nothing to do or no such a, b (a prime L > 255 keeps the kernel's refusal)."""
    h, w, c = lw.shape_of(xin)
    if ow != 1 or oh not in (1, h) or max(w, h if oh == 1 else 1) <= 255:
        return None
    rows, length = (h, w) if oh == h else (1, h * w)
    b = next((d for d in range(min(255, length), 0, -1) if length % d == 0 and length // d <= 255), None)
    if b is None:
        return None
    a = length // b
    flat = _reshape_to(lw, n, xin, (rows * a, b, c))
    return lw.add(n, op, [flat], (rows, 1, c), kernel=(a, b), stride=(a, b), padding=(0, 0, 0, 0))


def _manual_norm(lw: _Lowering, n, dims: list[int]) -> bool:
    """LayerNorm written out, as ConvNeXt's channels_first LayerNorm: u = x.mean(D, keepdim=True);
    s = (x - u).pow(2).mean(D, keepdim=True); y = (x - u) / torch.sqrt(s + eps) (or `* torch.rsqrt(s + eps)`,
    `d * d`, `x.var(D, keepdim=True, unbiased=False)`). n is the first mean; on a match the chain becomes one
    layer_norm over D (the dims moved innermost by free permutes), y's value is set ahead in lw.ready, the chain's
    other nodes lower to nothing; True."""
    x = n.args[0]

    def users(v) -> list:
        return list(v.users)

    def fn(v, *targets) -> bool:
        return isinstance(v, torch.fx.Node) and v.op == "call_function" and v.target in targets

    subs = users(n)
    if not subs or not all(fn(d, aten.sub.Tensor) and d.args[0] is x and d.args[1] is n and len(d.args) == 2
                           and not d.kwargs for d in subs):
        return False
    sq = [u for d in subs for u in users(d) if (fn(u, aten.pow.Tensor_Scalar) and u.args[1] == 2)
          or (fn(u, aten.mul.Tensor) and u.args[0] is d and u.args[1] is d)]
    rank = len(_torch_sizes(x))

    def over(v, keep: int | None) -> bool:  # reduces exactly dims, keepdim=True
        vd, a = (v.args[1] if len(v.args) > 1 else v.kwargs.get("dim")), list(v.args) + [None] * 4
        kd = a[keep] if keep is not None and a[keep] is not None else v.kwargs.get("keepdim", False)
        return (vd is not None and kd is True and len(users(v)) == 1
                and sorted({int(d) % rank for d in ([vd] if isinstance(vd, int) else vd)}) == dims)

    if sq:  # (x - u).pow(2).mean(D, keepdim=True)
        if len(sq) != 1 or len(users(sq[0])) != 1:
            return False
        var = users(sq[0])[0]
        if not (fn(var, aten.mean.dim) and over(var, 2)):
            return False
    else:  # x.var(D, keepdim=True, unbiased=False) / correction=0: the biased variance
        var = next((v for v in users(x) if (fn(v, aten.var.dim) and len(v.args) > 2 and v.args[2] is False
                                             and over(v, 3))
                    or (fn(v, aten.var.correction) and v.kwargs.get("correction") == 0 and over(v, None))), None)
        if var is None:
            return False
    add = users(var)[0]
    if not (fn(add, aten.add.Tensor, aten.add.Scalar) and add.args[0] is var and isinstance(add.args[1], (int, float))
            and float(add.args[1]) > 0 and len(users(add)) == 1):
        return False
    root = users(add)[0]
    if not ((fn(root, aten.sqrt.default) or fn(root, aten.rsqrt.default)) and len(users(root)) == 1):
        return False
    out = users(root)[0]
    num = out.args[0] if isinstance(out.args[0], torch.fx.Node) and out.args[0] in subs else out.args[1]
    want = aten.div.Tensor if root.target is aten.sqrt.default else aten.mul.Tensor
    if not (fn(out, want) and num in subs and out.args[1 if out.args[0] is num else 0] is root and not out.kwargs
            and all(set(users(d)) <= {*sq, out} for d in subs)):
        return False
    sizes = _torch_sizes(x)
    perm = [d for d in range(rank) if d not in dims] + dims
    inv = [int(i) for i in np.argsort(perm)]
    moved = tuple(sizes[d] for d in perm)
    step = _steps(lw, n)
    inner = step("ln_in", aten.permute.default, (x, perm), moved)
    ln = step("ln", aten.layer_norm.default, (inner, [sizes[d] for d in dims], None, None, float(add.args[1])), moved)
    y = step("ln_out", aten.permute.default, (ln, inv), sizes)
    for v in [*subs, *sq, var, add, root]:
        lw.ready[v.name] = (None, None)
    lw.ready[out.name] = (lw.env[y.name], lw.lay.get(y.name))
    return True


def _var(lw: _Lowering, n) -> None:
    """x.var(D, keepdim=True, unbiased=False) written BEFORE the x.mean(D, keepdim=True) of a LayerNorm written
    out: the chain is matched from that mean (_manual_norm), so the order in forward() does not matter; the mean
    and the chain then lower to nothing. A variance outside such a chain is refused."""
    x = n.args[0]
    rank = len(_torch_sizes(x))
    for m in list(x.users):
        a = list(m.args) + [None] * 3
        dims = a[1] if a[1] is not None else m.kwargs.get("dim")
        keepdim = a[2] if a[2] is not None else m.kwargs.get("keepdim", False)
        if m.target is not aten.mean.dim or keepdim is not True or dims is None:
            continue
        dims = sorted({int(d) % rank for d in ([dims] if isinstance(dims, int) else dims)})
        if m.name not in lw.ready and _manual_norm(lw, m, dims):
            lw.ready[m.name] = (None, None)
            return None
    raise _err(lw, n, "computes a variance (x.var) outside a LayerNorm written out; qgen supports x.var(D, "
                      "keepdim=True, unbiased=False) as the variance of u = x.mean(D, keepdim=True); (x - u) / "
                      "torch.sqrt(var + eps). Use nn.LayerNorm / nn.GroupNorm, or write the norm out in full")


def _reduce(kind: str):
    """mean (aten.mean.dim), amax, max.dim: pooling over H and/or W, REDUCE over the channels."""
    def handler(lw: _Lowering, n) -> Any:
        a = list(n.args) + [None] * (3 - len(n.args))
        dims = a[1] if a[1] is not None else n.kwargs.get("dim")
        keepdim = bool(a[2] if a[2] is not None else n.kwargs.get("keepdim", False))
        rank = len(n.args[0].meta["val"].shape)
        dims = [dims] if isinstance(dims, int) else list(dims or range(1, rank))  # amax(dim=[]): every dim
        dims = sorted({int(d) % rank for d in dims})
        what = f"{'mean' if kind == 'mean' else 'max'} over dims {dims}"
        if 0 in dims:
            raise _err(lw, n, f"{what} reduces the batch dimension; qgen reduces C, H, W or L")
        if kind == "mean" and keepdim and _manual_norm(lw, n, dims):  # LayerNorm written out: one layer_norm
            return None
        xin = lw.value(n.args[0])
        out = _reduce_axes(lw, n, kind, xin, {ir_axis(d, rank) if rank > 2 else 0 for d in dims})
        if not keepdim and rank - len(dims) < 2:
            raise _err(lw, n, f"{what} without keepdim leaves a {rank - len(dims)}-D tensor; qgen's tensors keep the "
                              "batch and one more dim: pass keepdim=True")
        if not keepdim:  # the reduced dims dropped: a view of the keepdim result, put in qgen's convention
            sizes = tuple(n.meta["val"][0].shape if n.target is aten.max.dim else n.meta["val"].shape)
            keep = tuple(1 if d in dims else s for d, s in enumerate(n.args[0].meta["val"].shape))
            src, dst, shape = layout.view(layout.canonical(keep), sizes), layout.canonical(sizes), \
                layout.canonical_shape(sizes)
            if src != dst:  # (1, C, H, W) -> (1, H, W): one transpose
                out = lw.relayout(out, src, dst, shape, source_of(n))
            elif lw.shape_of(out) != shape:  # the same bytes (named as the ONNX front end names it)
                out = _reshape_to(lw, n, out, shape)
        return (out, None) if n.target is aten.max.dim else out
    return handler


def _sum(lw: _Lowering, n) -> str:
    """torch.sum / x.sum(dim, keepdim) (aten.sum.dim_IntList, aten.sum.default): the summed dims moved innermost
    (a copy only if they lie otherwise), one REDUCE kind "sum" over them: the exact integer sum requantised once
    to the sum's own calibrated format (codegen/ops/pool.py)."""
    x = n.args[0]
    if x.name not in lw.lay:
        raise _err(lw, n, "sum of a constant; qgen computes on activations (fold the constant)")
    a = list(n.args) + [None] * 3
    dims = a[1] if a[1] is not None else n.kwargs.get("dim")
    keepdim = bool(a[2] if a[2] is not None else n.kwargs.get("keepdim", False))
    sizes = lw.lay[x.name].sizes
    rank = len(sizes)
    dims = sorted({int(d) % rank for d in ([dims] if isinstance(dims, int) else (dims or range(rank)))})
    dims = [d for d in dims if sizes[d] > 1] or dims[-1:]
    lay = layout.move_dims_innermost(lw.lay[x.name], dims)
    inner = int(np.prod([sizes[d] for d in dims]))
    xin = lw.value_in(x, lay, (lay.size // inner, inner))
    out = lw.add(n, Op.REDUCE, [xin], (lay.size // inner, 1), kind="sum")
    kept = layout.broadcast_of(lay, tuple(1 if d in dims else s for d, s in enumerate(sizes)))
    if keepdim:
        return lw.bind(n, out, kept)
    new = layout.view(kept, _torch_sizes(n))
    assert new is not None, (kept, _torch_sizes(n))
    return lw.bind(n, out, new)


def _reduce_axes(lw: _Lowering, n, kind: str, xin: str, axes: set[int]) -> str:
    """Mean or max of IR tensor xin over IR axes (0: H, 1: W, 2: channels; a vector's only axis is its last),
    keeping them with size 1: one global pooling over H/W, then one REDUCE over the last axis."""
    shape = lw.shape_of(xin)
    out = xin
    if len(shape) == 3 and axes & {0, 1}:
        h, w, c = shape
        kh, kw = (h if 0 in axes else 1), (w if 1 in axes else 1)
        if kh * kw > 1:
            op = Op.AVGPOOL2D if kind == "mean" else Op.MAXPOOL2D
            out = _long_pool(lw, n, op, xin, h // kh, w // kw)
            if out is None:
                out = lw.add(n, op, [xin], (h // kh, w // kw, c), kernel=(kh, kw), stride=(kh, kw),
                             padding=(0, 0, 0, 0))
    if len(shape) - 1 in axes and shape[-1] > 1:
        out = lw.add(n, Op.REDUCE, [out], lw.shape_of(out)[:-1] + (1,), kind=kind)
    return out


def _reshape_to(lw: _Lowering, n, xin: str, shape: tuple[int, ...]) -> str:
    return lw.add(n, Op.RESHAPE, [xin], shape, shape=shape)


def _view(lw: _Lowering, n) -> str:
    """view/reshape/flatten/unflatten/squeeze/unsqueeze: metadata (frontend/layout.py view), a RESHAPE alias
    to the IR shape of the new sizes; a TRANSPOSE first only if the dims to split do not lie so."""
    if n.args[0].name not in lw.lay:  # a constant (torch.tensor([...]).view(1, C, 1, 1)): reshaped here
        return np.asarray(lw.env[n.args[0].name]).reshape(tuple(n.meta["val"].shape))
    x_ir, lay = lw.raw(n.args[0])
    sizes = _torch_sizes(n)
    if sizes is None:
        raise _err(lw, n, f"dynamic or non-tensor shape {n.meta.get('val')}; qgen compiles fixed shapes")
    new = layout.view(lay, sizes)
    if new is None:  # copy into the cheapest layout where the view is free
        target = layout.view_target(lay, sizes)
        x_ir = lw.relayout(x_ir, lay, target, target.phys or (1,), source_of(n))
        new = layout.view(target, sizes)
        assert new is not None, (lay, target, sizes)
    shape = layout.canonical_shape(sizes)
    if lw.shape_of(x_ir) == shape:
        return lw.bind(n, x_ir, new)
    return lw.bind(n, _reshape_to(lw, n, x_ir, shape), new)


def _permute(lw: _Lowering, n) -> str:
    """permute/transpose/t: metadata only (the buffer is not touched)."""
    x_ir, lay = lw.raw(n.args[0])
    if n.target is aten.permute.default:
        new = layout.permute(lay, n.args[1])
    elif n.target is aten.t.default:
        new = layout.transpose(lay, 0, 1) if len(lay.sizes) == 2 else lay
    else:
        new = layout.transpose(lay, int(n.args[1]), int(n.args[2]))
    assert new.sizes == _torch_sizes(n), (new, _torch_sizes(n))
    return lw.bind(n, x_ir, new)


def _same(lw: _Lowering, n) -> str:
    """clone/contiguous/alias/detach/dropout (eval), expand to the same sizes: the same tensor."""
    if n.args[0].name not in lw.lay:  # a constant written in forward(), torch.tensor(2.0).detach_(): itself
        return lw.env[n.args[0].name]  # an expanded constant stays small: its reader broadcasts it (_cat too)
    x_ir, lay = lw.raw(n.args[0])
    if _torch_sizes(n) != lay.sizes and n.users and all(u.target in _BROADCASTING for u in n.users):
        return lw.bind(n, x_ir, lay)  # x.expand_as(y) read only by ops that broadcast: x itself (_broadcast)
    if _torch_sizes(n) != lay.sizes:
        raise _err(lw, n, f"expands {list(lay.sizes)} to {list(_torch_sizes(n))}; qgen supports broadcasting only "
                          "where an op does it itself (add, sub, mul, maximum, minimum of two activations)")
    return lw.bind(n, x_ir, lay)


# binary element-wise ops that broadcast their operands (_broadcast): an expand() read only by these is free
_BROADCASTING = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.maximum.default, aten.minimum.default,
                 aten.max.other, aten.min.other, aten.mul_.Tensor, aten.add_.Tensor, aten.sub_.Tensor}


def _to(lw: _Lowering, n) -> Any:
    """x.to(device) / .to(x.device) / .float() / .to(torch.float32) (an initial state made with
    torch.zeros(...).to(x.device)): the same tensor; a cast to an integer type is refused."""
    val = n.meta.get("val")
    if isinstance(val, torch.Tensor) and not val.dtype.is_floating_point:
        raise _err(lw, n, f"casts to {val.dtype}; qgen computes float tensors (quantised by the compiler). "
                          "Remove the cast")
    return _same(lw, n)


def _slice_of(lw: _Lowering, n, x, dim: int, start: int, length: int) -> str:
    """x[..., start:start + length, ...] along PyTorch dim `dim`: one SLICE copy along the physical axis that
    is that dim (the canonical layout's if it spans several); none for the whole dim."""
    x_ir, lay = lw.raw(x)
    dim %= len(lay.sizes)
    if start == 0 and length == lay.sizes[dim]:
        return lw.bind(n, x_ir, lay)
    axis = layout.single_axis(lay, dim)
    if axis is None:  # several axes (a flattened image): the canonical layout holds it as one
        lay, x_ir = layout.canonical(lay.sizes), lw.value(x)
        axis = layout.single_axis(lay, dim)
    xin = lw.alias(x_ir, lay.phys, source_of(n))
    shape = list(lay.phys)
    shape[axis] = length
    out = lw.add(n, Op.SLICE, [xin], tuple(shape), axis=axis, start=int(start), length=int(length))
    return lw.bind(n, out, layout.resize_dim(lay, dim, length))


def _squeezed(lw: _Lowering, n, out: str) -> str:
    """After a length-1 slice: drop the dim (select, unbind), metadata only."""
    return lw.bind(n, out, layout.view(lw.lay[n.name], _torch_sizes(n)))


def _slice(lw: _Lowering, n) -> str:
    """aten.slice.Tensor(x, dim, start, end, step) (x[:, a:b]), aten.narrow(x, dim, start, length)."""
    x = n.args[0]
    a = list(n.args) + [None] * (5 - len(n.args))
    if isinstance(lw.env.get(x.name), np.ndarray):  # a constant (self.pe[:, :x.size(1)]): sliced here
        value = lw.env[x.name]
        dim = int(a[1] if a[1] is not None else n.kwargs.get("dim", 0)) % value.ndim
        if n.target is aten.narrow.default:
            return np.take(value, range(int(a[2]) % value.shape[dim], int(a[2]) % value.shape[dim] + int(a[3])),
                           axis=dim)
        cut = slice(a[2] if a[2] is not None else n.kwargs.get("start"),
                    a[3] if a[3] is not None else n.kwargs.get("end"), a[4] if a[4] is not None else None)
        return value[(slice(None),) * dim + (cut,)]
    sizes = lw.lay[x.name].sizes
    dim = int(a[1] if a[1] is not None else n.kwargs.get("dim", 0)) % len(sizes)
    if n.target is aten.narrow.default:
        start = int(a[2]) % sizes[dim] if int(a[2]) < 0 else int(a[2])
        return _slice_of(lw, n, x, dim, start, int(a[3]))
    step = a[4] if a[4] is not None else n.kwargs.get("step", 1)
    if step != 1:
        raise _err(lw, n, f"slice with step {step}; qgen supports contiguous slices (step 1)")
    start, end, _ = slice(a[2] if a[2] is not None else n.kwargs.get("start"),
                          a[3] if a[3] is not None else n.kwargs.get("end")).indices(sizes[dim])
    if end <= start:
        raise _err(lw, n, f"empty slice [{start}:{end}] of dim {dim}; qgen needs at least one element")
    return _slice_of(lw, n, x, dim, start, end - start)


def _select(lw: _Lowering, n) -> str:
    """x[:, i] / x.select(dim, i): a length-1 slice, the dim squeezed."""
    x, dim, index = n.args[0], int(n.args[1]), int(n.args[2])
    sizes = lw.lay[x.name].sizes
    dim %= len(sizes)
    return _squeezed(lw, n, _slice_of(lw, n, x, dim, index % sizes[dim], 1))


def _split(lw: _Lowering, n) -> tuple:
    """chunk/split/split_with_sizes/unbind: the parts are made (SLICE) where getitem reads them."""
    x = n.args[0]
    sizes = lw.lay[x.name].sizes
    a = list(n.args) + [None] * 3
    if n.target is aten.unbind.int:
        dim = int(a[1] if a[1] is not None else n.kwargs.get("dim", 0)) % len(sizes)
        lengths, squeeze = [1] * sizes[dim], True
    else:
        dim = int(a[2] if a[2] is not None else n.kwargs.get("dim", 0)) % len(sizes)
        size, squeeze = sizes[dim], False
        if n.target is aten.split_with_sizes.default:
            lengths = [int(v) for v in a[1]]
        elif n.target is aten.chunk.default:
            each = -(-size // int(a[1]))
            lengths = [min(each, size - s) for s in range(0, size, each)]
        else:
            each = int(a[1])
            lengths = [min(each, size - s) for s in range(0, size, each)]
    starts = np.cumsum([0] + lengths[:-1])
    lw.parts[n.name] = (x, dim, [(int(s), int(k)) for s, k in zip(starts, lengths)], squeeze)
    return tuple(lengths)



def _add(lw: _Lowering, n) -> str:
    a, b = n.args[0], n.args[1]
    alpha = n.kwargs.get("alpha", 1)
    ka, kb = _scalar(lw, a), _scalar(lw, b)
    masked = masks.additive(lw, n, a, b) if alpha == 1 else None  # scores + a 0/-inf mask, before softmax
    if masked is not None:
        return masked
    if (ka is None) != (kb is None) and isinstance(alpha, (int, float)):  # x + c, c + x: an affine op
        return _affine(lw, n, a, 1.0, kb * alpha) if kb is not None else _affine(lw, n, b, alpha, ka)
    if isinstance(alpha, (int, float)) and _per_channel(lw, n, a, b) is not None:  # x + k[c]: a bias
        return _channelwise(lw, n, a, 1.0, alpha * _per_channel(lw, n, a, b))
    if isinstance(alpha, (int, float)) and _per_channel(lw, n, b, a) is not None:
        return _channelwise(lw, n, b, alpha, _per_channel(lw, n, b, a))
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or alpha != 1:
        raise _err(lw, n, "add of a constant (or with alpha); qgen supports adding two activations "
                          "(residual add). Fold the constant into a bias.")
    if a.name not in lw.lay or b.name not in lw.lay:  # x + C: C a const operand (positional encoding)
        return _with_const(lw, n, Op.ADD, a, b)
    if lw.lay[a.name].sizes != lw.lay[b.name].sizes:  # broadcasting
        return _broadcast(lw, n, Op.ADD, a, b)
    an, bn, lay = lw.pair(n, a, b)
    return lw.bind(n, lw.add(n, Op.ADD, [an, bn], lw.shape_of(an)), lay)


# -- arithmetic (codegen/ops/eltwise.py): two activations -> mul/sub/maximum/minimum; an activation and a
# scalar (a Python number or a one-element constant tensor) -> affine x * scale + offset


def _scalar(lw: _Lowering, arg) -> float | None:
    """The value of a Python number or of a one-element constant tensor (torch.tensor(2.0)); None otherwise."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return float(arg)
    value = lw.env.get(arg.name) if isinstance(arg, torch.fx.Node) else None  # no layout copy of an activation
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(-1)[0])
    return None


def _affine(lw: _Lowering, n, x, scale: float, offset: float) -> str:
    if isinstance(x, torch.fx.Node) and x.name in lw.lay:  # element-wise: in the layout x lies in (no copy)
        x_ir, lay = lw.raw(x)
        return lw.bind(n, lw.add(n, Op.AFFINE, [x_ir], lw.shape_of(x_ir), scale=float(scale),
                                 offset=float(offset)), lay)
    xin = lw.value(x)
    if isinstance(xin, np.ndarray):  # 0.5 * self.pos_embedding: folded here (a constant the model computes)
        return np.asarray(xin, dtype=np.float64) * scale + offset
    if not isinstance(xin, str):
        raise _err(lw, n, "arithmetic on constants only; qgen computes on activations (fold the constant)")
    return lw.add(n, Op.AFFINE, [xin], lw.shape_of(xin), scale=float(scale), offset=float(offset))


def _per_channel(lw: _Lowering, n, x, k) -> np.ndarray | None:
    """Constant `k` broadcast along the channel (feature) dim of activation `x` only, (1, C, 1, 1), (C, 1, 1),
    (1, C, 1), (1, F), ...: its C values; None for anything else."""
    value = lw.env.get(k.name) if isinstance(k, torch.fx.Node) else None  # no layout copy of an activation
    if not (isinstance(value, np.ndarray) and value.size > 1 and isinstance(x, torch.fx.Node) and x.name in lw.lay):
        return None
    rank = len(lw.lay[x.name].sizes)
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    sizes = lw.lay[x.name].sizes
    if len(shape) != rank or rank < 2 or shape[1] != sizes[1] or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return value.reshape(-1).astype(np.float64) if _inner_dim(lw, x, shape) is not None else None
    return value.reshape(-1).astype(np.float64)


def _inner_dim(lw: _Lowering, x, shape: tuple[int, ...]) -> int | None:
    """The PyTorch dim d (not 1) a constant of (padded) `shape` varies along, when it is x's innermost physical
    axis as qgen holds x (a layer scale `gamma * x` or a bias over the last dim of a channels-last (1, H, W, C)):
    the constant then scales x's IR channels where x lies, no copy; None otherwise."""
    sizes, lay = lw.lay[x.name].sizes, lw.lay[x.name]
    varying = [i for i, d in enumerate(shape) if d != 1]
    ir = lw.env.get(x.name)
    if len(varying) != 1 or varying[0] in (0, 1) or shape[varying[0]] != sizes[varying[0]]:
        return None
    d = varying[0]
    if lay.innermost_dim() != d or not isinstance(ir, str) or lw.shape_of(ir)[-1] != sizes[d]:
        return None
    return d


def _channelwise(lw: _Lowering, n, x, scale, offset) -> str:
    """x * scale[c] + offset[c] with constant tensors: a BatchNorm node, which fold_bn folds into the conv or
    Linear producing x, or lowers (depthwise 1x1 on images, channel_affine on vectors): (x - mean) / std.
    A constant along x's innermost physical dim (not PyTorch's dim 1) scales x where it lies."""
    k = n.args[1] if n.args[0] is x else n.args[0]
    value = lw.env.get(k.name) if isinstance(k, torch.fx.Node) else None
    if isinstance(value, np.ndarray) and x.name in lw.lay:
        rank = len(lw.lay[x.name].sizes)
        if value.ndim <= rank and _inner_dim(lw, x, (1,) * (rank - value.ndim) + tuple(value.shape)) is not None:
            x_ir, lay = lw.raw(x)
            c = lw.shape_of(x_ir)[-1]
            scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (c,)).copy()
            offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), (c,)).copy()
            return lw.bind(n, lw.add(n, Op.BATCH_NORM, [x_ir, lw.const(f"{n.name}_scale", scale),
                                                        lw.const(f"{n.name}_shift", offset)], lw.shape_of(x_ir)), lay)
    xin = lw.value(x)
    c = lw.shape_of(xin)[-1]
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (c,)).copy()
    offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), (c,)).copy()
    return lw.add(n, Op.BATCH_NORM, [xin, lw.const(f"{n.name}_scale", scale), lw.const(f"{n.name}_shift", offset)],
                  lw.shape_of(xin))


def _const_value(lw: _Lowering, arg) -> np.ndarray | None:
    """The value of a constant tensor argument (a buffer, a Parameter, sliced or expanded); None otherwise."""
    value = lw.env.get(arg.name) if isinstance(arg, torch.fx.Node) and arg.name not in lw.lay else None
    return value if isinstance(value, np.ndarray) else None


def _const_node(lw: _Lowering, n, data: np.ndarray) -> str:
    """A CONST node (codegen/ops/const.py) holding `data` (IR shape and order) as an activation."""
    return lw._inserted(f"{n.name}_const", Op.CONST, lw.const(f"{n.name}_value", data), tuple(data.shape),
                        source_of(n))


def _with_const(lw: _Lowering, n, op: Op, a, b) -> str:
    """`op` of an activation and a constant tensor that is neither a scalar nor per-channel (a positional
    encoding (1, T, D), a (1, C, H, W) bias, a (T, 1) scale): the constant, broadcast to the activation's sizes
    and laid out as the activation lies (no copy of the activation), becomes a CONST node; `op` then reads two
    activations. A constant the activation would have to be broadcast to is refused."""
    (x, k), const_first = ((b, a), True) if _const_value(lw, a) is not None else ((a, b), False)
    value = _const_value(lw, k)
    if _const_value(lw, x) is not None:  # self.pos * 2 + self.bias: folded here (a constant the model computes)
        fold = {Op.ADD: np.add, Op.SUB: np.subtract, Op.MUL: np.multiply, Op.MAXIMUM: np.maximum,
                Op.MINIMUM: np.minimum}[op]
        return fold(_const_value(lw, a), _const_value(lw, b))
    x_ir, lay = lw.raw(x)
    sizes = tuple(lay.sizes)
    try:
        broadcast = np.broadcast_shapes(np.shape(value), sizes)
    except ValueError:
        broadcast = None
    if broadcast != sizes:
        raise _err(lw, n, f"{op.value} of an activation of shape {list(sizes)} and a constant of shape "
                          f"{list(np.shape(value))}; qgen supports a constant that broadcasts to the activation's "
                          "shape (the activation itself is not broadcast). Expand the activation first.")
    if not np.all(np.isfinite(value)):
        raise _err(lw, n, f"{op.value} with a constant of shape {list(np.shape(value))} holding inf or NaN; qgen "
                          "quantises constants to int8: use a large finite value (e.g. -1e4 for a mask)")
    small = _small_const(lw, n, op, x, np.asarray(value, dtype=np.float64), const_first)
    if small is not None:
        return small
    full = np.broadcast_to(np.asarray(value, dtype=np.float64), sizes).reshape(-1)[lay.torch_index()]
    c_ir = _const_node(lw, n, full.reshape(lw.shape_of(x_ir)))
    inputs = [c_ir, x_ir] if const_first and op is Op.SUB else [x_ir, c_ir]  # C - x; else x first
    return lw.bind(n, lw.add(n, op, inputs, lw.shape_of(x_ir)), lay)


def _small_const(lw: _Lowering, n, op: Op, x, value: np.ndarray, const_first: bool) -> str | None:
    """A constant at most half the activation's size ((1, 1, H, W) against (1, C, H, W), (1, T, 1) against
    (1, T, D) rows...) kept at its own sizes: a CONST node in the canonical layout read by the op's broadcasting
    form (_broadcast), so flash and arena hold the small constant. None (nothing added) where that form cannot take
    it: the caller stores the constant at the activation's size."""
    import types

    sizes = tuple(lw.lay[x.name].sizes)
    value = value.reshape((1,) * (len(sizes) - value.ndim) + value.shape)
    if value.ndim != len(sizes) or value.shape[0] != 1 or 2 * value.size > int(np.prod(sizes)):
        return None
    nodes, tensors, used = len(lw.graph.nodes), set(lw.graph.tensors), set(lw.used_names)
    key = f"{n.name}__small_const"
    canon = layout.canonical(value.shape)
    data = value.reshape(-1)[canon.torch_index()].reshape(layout.canonical_shape(value.shape))
    lw.env[key], lw.lay[key] = _const_node(lw, n, data), canon
    stand_in = types.SimpleNamespace(name=key, meta=n.meta)
    try:
        return _broadcast(lw, n, op, *((stand_in, x) if const_first else (x, stand_in)))
    except UserError:  # more broadcast runs than the kernels hold: undo, the caller stores it full size
        del lw.graph.nodes[nodes:]
        for t in set(lw.graph.tensors) - tensors:
            del lw.graph.tensors[t]
        lw.used_names.intersection_update(used)
        return None
    finally:
        lw.env.pop(key)
        lw.lay.pop(key)


def _constant(lw: _Lowering, n) -> Any:
    """torch.tensor(...) written in forward(): the lifted constant itself."""
    return lw.value(n.args[0])


def _broadcast(lw: _Lowering, n, op: Op, a, b) -> str:
    """A binary element-wise op of two activations whose PyTorch sizes differ and broadcast (key * scores over
    the channels, a (1, C, H, 1) row gate, (T, 1) * (1, D)): the output lies as the full-size operand (or
    canonically if both broadcast); each operand is read in that layout with its broadcast dims' axes of size 1
    (IR shapes of equal rank, dims equal or 1: the op's "bcast" kernel form), no copy of the full operand."""
    from ..ops.eltwise import COMMUTATIVE, bcast_plan

    sizes = [lw.lay[x.name].sizes for x in (a, b)]
    try:
        out_sizes = tuple(torch.broadcast_shapes(*sizes))
    except RuntimeError:
        raise _err(lw, n, f"{op.value} of shapes {list(sizes[0])} and {list(sizes[1])}, which do not broadcast") \
            from None
    if out_sizes != _torch_sizes(n):  # an operand .expand()ed and not broadcast back by the other: no free view
        raise _err(lw, n, f"{op.value} of shapes {list(sizes[0])} and {list(sizes[1])} (after a free expand) gives "
                          f"{list(out_sizes)}, not {list(_torch_sizes(n))}; expand a tensor only where the "
                          "other operand has the full size")
    rank = len(out_sizes)
    lays = [Layout(lw.lay[x.name].phys, ((),) * (rank - len(s)) + lw.lay[x.name].dims) for x, s in zip((a, b), sizes)]
    full = [lay.sizes == out_sizes for lay in lays]
    if op in COMMUTATIVE and full[1] and not full[0]:  # the full operand first
        a, b, lays, full = b, a, lays[::-1], full[::-1]
    out_lay = lays[0] if full[0] else lays[1] if full[1] else layout.canonical(out_sizes)
    canonical = out_lay == layout.canonical(out_sizes) and out_sizes[0] == 1 and 2 <= rank <= 4
    out_shape = layout.canonical_shape(out_sizes) if canonical else out_lay.phys or (1,)
    ins = []
    for x, lay in zip((a, b), lays):
        drop = {ax for d, g in enumerate(out_lay.dims) if lay.sizes[d] == 1 for ax in g}
        shape = tuple(1 if ax in drop else s for ax, s in enumerate(out_lay.phys)) or (1,)
        if canonical:  # qgen's IR shapes ((H, W, C), (1, L, C), (F,)): a (1, C, 1, 1) gate stays (1, 1, C)
            shape = layout.canonical_shape(lay.sizes)
        ins.append(lw.relayout(lw.env[x.name], lay, layout.broadcast_of(out_lay, lay.sizes), shape, source_of(x)))
    if bcast_plan(*(lw.shape_of(t) for t in ins)) is None:
        raise _err(lw, n, f"{op.value} of shapes {list(sizes[0])} and {list(sizes[1])} alternates broadcast and "
                          "full dims more than qgen's broadcasting kernels hold (4 runs); reshape the operands so "
                          "that the broadcast dims are adjacent")
    return lw.bind(n, lw.add(n, op, ins, out_shape), out_lay)


def _two_activations(lw: _Lowering, n, op: Op, a, b) -> str:
    from ..ops.eltwise import broadcasts

    if (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node) and a.name in lw.lay and b.name in lw.lay
            and lw.lay[a.name].sizes != lw.lay[b.name].sizes):
        return _broadcast(lw, n, op, a, b)
    if _const_value(lw, a) is not None or _const_value(lw, b) is not None:  # x - C, C * x: a const operand
        return _with_const(lw, n, op, a, b)
    an, bn = lw.value(a), lw.value(b)
    sa, sb = lw.shape_of(an), lw.shape_of(bn)
    if op is Op.MUL and broadcasts(sb, sa):  # gate * x: the full-size operand first
        an, bn, sa, sb = bn, an, sb, sa
    if sa != sb and not (op is Op.MUL and broadcasts(sa, sb)):
        extra = " or one (1, C, 1, 1) gate against (1, C, H, W)" if op is Op.MUL else ""
        raise _err(lw, n, f"{op.value} of IR shapes {sa} and {sb}; qgen supports equal shapes{extra}. Expand "
                          "or reshape the operands first.")
    return lw.add(n, op, [an, bn], sa)


def _mul(lw: _Lowering, n) -> str:
    a, b = n.args[0], n.args[1]
    ka, kb = _scalar(lw, a), _scalar(lw, b)
    if kb is not None and ka is None:
        return _affine(lw, n, a, kb, 0.0)
    if ka is not None and kb is None:
        return _affine(lw, n, b, ka, 0.0)
    for x, k in ((a, b), (b, a)):
        per_channel = _per_channel(lw, n, x, k)
        if per_channel is not None:
            return _channelwise(lw, n, x, per_channel, 0.0)
    return _two_activations(lw, n, Op.MUL, a, b)


def _div(lw: _Lowering, n) -> str:
    a, b = n.args[0], n.args[1]
    mode = n.kwargs.get("rounding_mode", n.args[2] if len(n.args) > 2 else None)
    kb = _scalar(lw, b)
    if mode is not None:
        raise _err(lw, n, f"division with rounding_mode='{mode}'; qgen supports true division by a constant")
    per_channel = _per_channel(lw, n, a, b)
    if per_channel is not None and np.all(per_channel != 0):
        return _channelwise(lw, n, a, 1.0 / per_channel, 0.0)
    if kb is None or _scalar(lw, a) is not None:
        raise _err(lw, n, "division by an activation; qgen supports dividing an activation by a constant "
                          "(x / 6). Multiply by a gate instead.")
    if kb == 0.0:
        raise _err(lw, n, "division by zero")
    return _affine(lw, n, a, 1.0 / kb, 0.0)


def _sub(lw: _Lowering, n) -> str:
    a, b = n.args[0], n.args[1]
    alpha = n.kwargs.get("alpha", n.args[2] if len(n.args) > 2 else 1)
    ka, kb = _scalar(lw, a), _scalar(lw, b)
    if n.target is aten.rsub.Scalar:  # other - alpha * x
        return _affine(lw, n, a, -alpha, kb)
    if kb is not None and ka is None:
        return _affine(lw, n, a, 1.0, -kb * alpha)
    if ka is not None and kb is None:
        return _affine(lw, n, b, -alpha, ka)
    if isinstance(alpha, (int, float)) and _per_channel(lw, n, a, b) is not None:  # x - k[c]
        return _channelwise(lw, n, a, 1.0, -alpha * _per_channel(lw, n, a, b))
    if isinstance(alpha, (int, float)) and _per_channel(lw, n, b, a) is not None:  # k[c] - x
        return _channelwise(lw, n, b, -alpha, _per_channel(lw, n, b, a))
    if alpha != 1:
        raise _err(lw, n, f"sub of two activations with alpha={alpha}; qgen supports alpha=1 (scale one operand "
                          "with a multiplication first)")
    return _two_activations(lw, n, Op.SUB, a, b)


def _extremum(op: Op):
    def handler(lw: _Lowering, n) -> str:
        return _two_activations(lw, n, op, n.args[0], n.args[1])
    return handler


def _prelu(lw: _Lowering, n) -> str:
    xin = lw.value(n.args[0])
    alpha = np.asarray(lw.param(n, n.args[1]), dtype=np.float64).reshape(-1)
    channels = lw.shape_of(xin)[-1]
    if alpha.size not in (1, channels):
        raise _err(lw, n, f"PReLU with {alpha.size} slopes on {channels} channels; qgen supports one slope or one "
                          "per channel")
    return lw.add(n, Op.PRELU, [xin], lw.shape_of(xin), alpha=tuple(float(v) for v in alpha))


def _pad(lw: _Lowering, n) -> str:
    xin = lw.value(n.args[0])
    pad = list(n.args[1])
    mode = n.args[2] if len(n.args) > 2 else n.kwargs.get("mode", "constant")
    value = n.args[3] if len(n.args) > 3 else n.kwargs.get("value", 0.0)
    if n.target is aten.constant_pad_nd.default:
        mode, value = "constant", n.args[2] if len(n.args) > 2 else 0.0
    if mode != "constant" or (value or 0.0) != 0.0:
        raise _err(lw, n, f"padding mode '{mode}' with value {value}; qgen pads with zeros (and reflect / replicate / "
                          "circular). Pad with value=0, or pad x - value and add the value back after the pad")
    shape = lw.shape_of(xin)
    pad = pad + [0] * (4 - len(pad))
    left, right, top, bottom = (int(p) for p in pad[:4])
    if len(shape) != 3 or len(n.args[1]) > 4 or min(left, right, top, bottom) < 0:
        raise _err(lw, n, f"padding {list(n.args[1])}; qgen supports non-negative zero padding of H and W")
    h, w, c = shape
    out = (h + top + bottom, w + left + right, c)
    _check_shape(lw, n, out)
    return lw.add(n, Op.PAD, [xin], out, padding=(top, left, bottom, right))


def _cat(lw: _Lowering, n) -> str:
    parts = [lw.value(t) for t in n.args[0]]
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    rank = len(n.meta["val"].shape)
    if all(isinstance(p, np.ndarray) for p in parts):
        raise _err(lw, n, "concatenation of constants only; qgen computes on activations (fold the constants)")
    for i, (arg, p) in enumerate(zip(n.args[0], parts)):  # a constant part (a cls token): a CONST node
        if isinstance(p, np.ndarray):
            sizes = _torch_sizes(arg) if isinstance(arg, torch.fx.Node) else None
            if sizes is not None and p.shape != sizes and np.broadcast_shapes(p.shape, sizes) == sizes:
                p = np.broadcast_to(p, sizes)  # cls.expand(1, T, -1): the constant as expanded
            if p.ndim != rank or not np.all(np.isfinite(p)) or (rank > 1 and p.shape[0] != 1):
                raise _err(lw, n, f"concatenation with a constant tensor of shape {list(p.shape)} to a rank-{rank} "
                                  "result; qgen concatenates a finite constant of the result's rank and batch 1 "
                                  "(expand a cls token to (1, 1, D) first)")
            canon = layout.canonical(p.shape)
            data = np.asarray(p, dtype=np.float64).reshape(-1)[canon.torch_index()]
            parts[i] = _const_node(lw, n, data.reshape(layout.canonical_shape(p.shape)))
    try:
        axis = ir_axis(int(dim), rank)
    except ValueError:
        raise _err(lw, n, "concatenation along the batch dimension is not supported") from None
    shape = list(lw.shape_of(parts[0]))
    shape[axis] = sum(lw.shape_of(p)[axis] for p in parts)
    _check_shape(lw, n, tuple(shape))
    return lw.add(n, Op.CONCAT, parts, tuple(shape), axis=axis)


def _softmax(lw: _Lowering, n, op: Op = Op.SOFTMAX) -> str:
    """Softmax (and log_softmax: op) over any dim: SOFTMAX runs over the innermost physical axis, so that dim
    is made innermost (no copy if it already is: attention scores)."""
    x_ir, lay = lw.raw(n.args[0])
    dim = int(n.args[1]) % len(lay.sizes)
    if lay.sizes[dim] > 1 and lay.innermost_dim() == dim:
        xin, out_lay = lw.alias(x_ir, lay.phys, source_of(n)), lay
    else:
        canon = layout.canonical(lay.sizes)
        if lay.sizes[dim] == 1 or canon.innermost_dim() == dim:
            xin, out_lay = lw.value(n.args[0]), canon
            if lay.sizes[dim] == 1 and lw.shape_of(xin)[-1] != 1:
                xin = lw.alias(xin, tuple(canon.phys) + (1,), source_of(n))
        else:
            out_lay = layout.move_innermost(lay, dim)
            xin = lw.value_in(n.args[0], out_lay, out_lay.phys)
    out = lw.add(n, op, [xin], lw.shape_of(xin))
    if masks.pending(lw, n.args[0]) is not None:  # a constant mask before it: masked softmax (frontend/masks.py)
        masks.apply(lw, n, out, out_lay)
    return lw.bind(n, out, out_lay)


def _log_softmax(lw: _Lowering, n) -> str:
    return _softmax(lw, n, Op.LOG_SOFTMAX)


def _lut(fn: str, **params):
    def handler(lw: _Lowering, n) -> str:
        attrs = dict(params)
        if fn == "leaky_relu":
            attrs["alpha"] = float(n.args[1]) if len(n.args) > 1 else 0.01
        if fn == "elu":
            attrs["alpha"] = float(n.args[1]) if len(n.args) > 1 else 1.0
        if fn == "softplus":
            attrs["beta"] = float(n.args[1]) if len(n.args) > 1 else 1.0
            attrs["threshold"] = float(n.args[2]) if len(n.args) > 2 else 20.0
        if fn == "gelu":
            approx = n.kwargs.get("approximate", "none")
            attrs["approximate"] = approx
        return _unary(lw, n, Op.LUT, fn=fn, **attrs)
    return handler


def _conv_transpose(lw: _Lowering, n) -> str:
    """aten.conv_transpose2d.input / conv_transpose1d.default(x, w, b, stride, padding, output_padding, groups,
    dilation) -> conv_transpose2d (codegen/ops/upsample.py); 1-D as H=1."""
    from ..ops.upsample import weight_from_torch

    one_d = n.target is aten.conv_transpose1d.default
    a = list(n.args) + [None] * (8 - len(n.args))
    names = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
    x, w_arg, b_arg, stride, padding, out_pad, groups, dilation = (n.kwargs.get(k, v) for k, v in zip(names, a))
    xin = lw.value(x)
    w = lw.param(n, w_arg)  # (Cin, Cout/groups, KH, KW) or (Cin, Cout/groups, K)
    if one_d:
        w = w[:, :, None, :]
    def axes(v, default: int) -> tuple[int, int]:
        v = default if v is None or (isinstance(v, (list, tuple)) and not len(v)) else v
        return (default, _pair(v)[0]) if one_d else _pair(v)
    stride, pad, opad, dil = axes(stride, 1), axes(padding, 0), axes(out_pad, 0), axes(dilation, 1)
    if one_d:
        stride, pad, opad, dil = (1, stride[1]), (0, pad[1]), (0, opad[1]), (1, dil[1])
    groups = int(groups or 1)
    h, wd, cin = lw.shape_of(xin)
    _, og, kh, kw = w.shape
    cout = og * groups
    crop = (pad[0], pad[1], pad[0] - opad[0], pad[1] - opad[1])
    oh = (h - 1) * stride[0] + (kh - 1) * dil[0] + 1 - crop[0] - crop[2]
    ow = (wd - 1) * stride[1] + (kw - 1) * dil[1] + 1 - crop[1] - crop[3]
    if max(stride) > 255 or max(crop[:2]) > 255 or max(kh, kw) > 255 or max(dil) > 255:
        shown = [dil[1]] if one_d else list(dil)
        raise _err(lw, n, f"kernel {kh}x{kw}, stride {list(stride)}, padding {list(pad)}, dilation={shown}: qgen "
                          "supports up to 255 each")
    _check_shape(lw, n, (oh, ow, cout))
    bias = lw.param(n, b_arg)
    wname = lw.const(f"{n.name}_w", weight_from_torch(w, groups))  # (Cout, KH, KW, Cin/groups) as conv2d
    bname = lw.const(f"{n.name}_b", bias if bias is not None else np.zeros(cout))
    attrs = ({"groups": groups} if groups != 1 else {}) | ({"dilation": tuple(dil)} if dil != (1, 1) else {})
    return lw.add(n, Op.CONV_TRANSPOSE2D, [xin, wname, bname], (oh, ow, cout), stride=tuple(stride), crop=crop,
                  **attrs)


def _upsample(mode: str, one_d: bool, has_align: bool):
    """aten.upsample_{nearest,bilinear}2d / _upsample_nearest_exact2d / upsample_{nearest,linear}1d (.vec and
    .default) -> resize (codegen/ops/upsample.py); the output size is torch's, the scales are torch's own
    (1/scale_factor when given, which is not always in/out)."""
    def handler(lw: _Lowering, n) -> str:
        xin = lw.value(n.args[0])
        rest = list(n.args[2:])
        align = bool(rest.pop(0)) if has_align and rest else bool(n.kwargs.get("align_corners", False))
        if n.target._overloadname == "vec":
            factors = rest[0] if rest else n.kwargs.get("scale_factors")
            scales = list(factors) if factors else [None] * (1 if one_d else 2)
        else:
            scales = list(rest) + [None] * ((1 if one_d else 2) - len(rest))
        if len(lw.shape_of(xin)) != 3:
            raise _err(lw, n, f"resize of a {len(lw.shape_of(xin))}-D tensor; qgen resizes images and sequences")
        if one_d:
            scales = [None, scales[0]]
        val = n.meta.get("val")
        out = ir_shape_of(tuple(val.shape))
        # a scale factor whose 1/s is exactly in/out computes what `size=` does: one IR for both spellings
        sizes = zip(lw.shape_of(xin)[:2], out[:2])
        scales = tuple(None if s is None or (1.0 / float(s) == i / o
                                             and np.float32(1.0 / float(s)) == np.float32(i / o))
                       else float(s) for s, (i, o) in zip(scales, sizes))
        _check_shape(lw, n, out)
        return lw.add(n, Op.RESIZE, [xin], out, mode=mode, align_corners=align, size=(out[0], out[1]),
                      scales=scales)
    return handler


def _identity(lw: _Lowering, n) -> Any:
    return _same(lw, n)


def _dropout(lw: _Lowering, n) -> Any:
    return _same(lw, n)


VALUES_AND_INDICES = {aten.adaptive_max_pool2d.default, aten.adaptive_max_pool1d.default, aten.max.dim,
                      aten.max_pool2d_with_indices.default}

HANDLERS: dict[Any, Callable[[_Lowering, Any], Any]] = {
    aten.conv2d.default: _conv2d,
    aten.conv1d.default: _conv1d,
    aten.conv1d.padding: _conv1d,
    aten.max_pool1d.default: _max_pool1d,
    aten.avg_pool1d.default: _avg_pool1d,
    aten.pad.default: _pad,
    aten.constant_pad_nd.default: _pad,
    aten.cat.default: _cat,
    aten.concat.default: _cat,
    aten.concatenate.default: _cat,
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.log_softmax.int: _log_softmax,
    aten._log_softmax.default: _log_softmax,
    aten.sigmoid.default: _lut("sigmoid"),
    aten.tanh.default: _lut("tanh"),
    aten.hardsigmoid.default: _lut("hardsigmoid"),
    aten.hardswish.default: _lut("hardswish"),
    aten.silu.default: _lut("silu"),
    aten.gelu.default: _lut("gelu"),
    aten.leaky_relu.default: _lut("leaky_relu"),
    aten.elu.default: _lut("elu"),
    aten.exp.default: _lut("exp"),
    aten.softplus.default: _lut("softplus"),
    aten.conv2d.padding: _conv2d,
    aten.conv_transpose2d.input: _conv_transpose,
    aten.conv_transpose1d.default: _conv_transpose,
    aten.upsample_nearest2d.vec: _upsample("nearest", False, False),
    aten.upsample_nearest2d.default: _upsample("nearest", False, False),
    aten._upsample_nearest_exact2d.vec: _upsample("nearest_exact", False, False),
    aten._upsample_nearest_exact2d.default: _upsample("nearest_exact", False, False),
    aten.upsample_bilinear2d.vec: _upsample("bilinear", False, True),
    aten.upsample_bilinear2d.default: _upsample("bilinear", False, True),
    aten.upsample_nearest1d.vec: _upsample("nearest", True, False),
    aten.upsample_nearest1d.default: _upsample("nearest", True, False),
    aten._upsample_nearest_exact1d.vec: _upsample("nearest_exact", True, False),
    aten._upsample_nearest_exact1d.default: _upsample("nearest_exact", True, False),
    aten.upsample_linear1d.vec: _upsample("bilinear", True, True),
    aten.upsample_linear1d.default: _upsample("bilinear", True, True),
    aten.linear.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    aten.layer_norm.default: _layer_norm,
    aten.native_layer_norm.default: _layer_norm,
    aten.group_norm.default: _group_norm,
    aten.native_group_norm.default: _group_norm,
    aten.instance_norm.default: _instance_norm,
    aten.relu.default: _relu,
    aten.hardtanh.default: _hardtanh,
    aten.relu6.default: lambda lw, n: _unary(lw, n, Op.RELU, lo=0.0, hi=6.0),
    aten.clamp.default: _clamp,
    aten.clamp_min.default: _clamp,
    aten.clamp_max.default: _clamp,
    aten.max_pool2d.default: _max_pool2d,
    aten.avg_pool2d.default: _avg_pool2d,
    aten.adaptive_avg_pool2d.default: _adaptive_pool(Op.AVGPOOL2D),
    aten.adaptive_avg_pool1d.default: _adaptive_pool(Op.AVGPOOL2D),
    aten.adaptive_max_pool2d.default: _adaptive_pool(Op.MAXPOOL2D),
    aten.adaptive_max_pool1d.default: _adaptive_pool(Op.MAXPOOL2D),
    aten.mean.dim: _reduce("mean"),
    aten.var.dim: _var,
    aten.var.correction: _var,
    aten.sum.dim_IntList: _sum,
    aten.sum.default: _sum,
    aten.amax.default: _reduce("max"),
    aten.max.dim: _reduce("max"),
    aten.flatten.using_ints: _view,
    aten.unflatten.int: _view,
    aten.view.default: _view,
    aten.reshape.default: _view,
    aten._unsafe_view.default: _view,
    aten.squeeze.default: _view,
    aten.squeeze.dim: _view,
    aten.squeeze.dims: _view,
    aten.unsqueeze.default: _view,
    aten.permute.default: _permute,
    aten.transpose.int: _permute,
    aten.swapaxes.default: _permute,
    aten.swapdims.default: _permute,
    aten.t.default: _permute,
    aten.slice.Tensor: _slice,
    aten.narrow.default: _slice,
    aten.select.int: _select,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    aten.chunk.default: _split,
    aten.unbind.int: _split,
    aten.matmul.default: _matmul,
    aten.bmm.default: _matmul,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten.masked_fill.Scalar: masks.masked_fill,
    aten.masked_fill_.Scalar: masks.masked_fill,
    aten.masked_fill.Tensor: masks.masked_fill,
    aten.masked_fill_.Tensor: masks.masked_fill,
    aten.baddbmm.default: masks.baddbmm,
    **{op: masks.compare for op in masks.COMPARISONS},
    aten._weight_norm.default: _weight_norm,
    aten.glu.default: _glu,
    aten.im2col.default: _im2col,
    aten.col2im.default: _col2im,
    aten._assert_tensor_metadata.default: lambda lw, n: None,  # .to(x.device) / .to(dtype): a check
    aten.to.dtype_layout: _to,
    aten.to.device: _to,
    aten.to.dtype: _to,
    aten._to_copy.default: _to,
    aten.mm.default: _matmul,
    aten.expand.default: _same,
    aten.expand_as.default: _same,
    aten.add.Tensor: _add,
    aten.add.Scalar: _add,
    aten.mul.Tensor: _mul,
    aten.mul.Scalar: _mul,
    aten.div.Tensor: _div,
    aten.div.Scalar: _div,
    aten.div.Tensor_mode: _div,
    aten.sub.Tensor: _sub,
    aten.sub.Scalar: _sub,
    aten.rsub.Scalar: _sub,
    aten.neg.default: lambda lw, n: _affine(lw, n, n.args[0], -1.0, 0.0),
    aten.maximum.default: _extremum(Op.MAXIMUM),
    aten.max.other: _extremum(Op.MAXIMUM),
    aten.minimum.default: _extremum(Op.MINIMUM),
    aten.min.other: _extremum(Op.MINIMUM),
    aten.prelu.default: _prelu,
    aten._prelu_kernel.default: _prelu,
    aten.lift_fresh_copy.default: _constant,
    aten.dropout.default: _dropout,
    aten.clone.default: _identity,
    aten.contiguous.default: _identity,
    aten.alias.default: _identity,
    aten.detach.default: _identity,
}
from .torch_recurrent import HANDLERS as _RECURRENT  # noqa: E402 (it imports this module's helpers)

HANDLERS.update(_RECURRENT)
from . import torch_cells as _cells  # noqa: E402 (nn.LSTMCell & co. unrolled in forward)

HANDLERS.update(_cells.HANDLERS)
from .torch_spellings import HANDLERS as _SPELLINGS  # noqa: E402 (pad modes, strided slices, tables ...)

HANDLERS.update(_SPELLINGS)

try:  # getitem comes from the operator module in FX graphs
    import operator

    HANDLERS[operator.getitem] = _getitem
except ImportError:  # pragma: no cover
    pass


def from_exported_program(program: torch.export.ExportedProgram, source: str = "",
                          modules: dict | None = None) -> Graph:
    """Lower an ExportedProgram (float) into qgen IR (float). `modules` (path -> nn.Module, from_module) lets
    error messages show a layer's constructor values."""
    from ..ir import verify

    graph = _Lowering(program, source or "exported program", modules).run()
    reject_non_finite(graph)
    verify(graph)
    return graph


def reject_non_finite(graph: Graph) -> None:
    for node in graph.nodes:
        for name in node.inputs:
            t = graph.tensors[name]
            if t.is_const and not np.all(np.isfinite(t.data)):
                bad = np.argwhere(~np.isfinite(t.data))[0]
                raise UserError(f"{node.where()}: parameter '{name}' contains {t.data[tuple(bad)]} at index "
                                f"{tuple(int(i) for i in bad)}. Fix the trained weights (NaN/Inf cannot be "
                                "quantised).")
