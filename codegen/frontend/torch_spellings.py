"""Spellings of existing ops that outside models use (issue 16, probe8), lowered through the existing handlers.

- `nn.Dropout2d` / `nn.AlphaDropout` / `nn.FeatureAlphaDropout` (eval): the same tensor, as `nn.Dropout`.
- `nn.Mish`, `nn.SELU`, `nn.CELU`, `nn.LogSigmoid`, `nn.Hardshrink`, `nn.Softshrink`, `nn.Threshold`, `torch.abs`:
  256-entry tables (the LUT op); `nn.RReLU` in eval is LeakyReLU with slope (lower + upper) / 2.
- `nn.PixelShuffle` / `F.pixel_unshuffle`: a view, a permute and a view (as `F.unfold` of patches is).
- `padding_mode='reflect' | 'replicate' | 'circular'` (Conv1d/Conv2d) and `F.pad(mode=...)`: the edges are
  slices of the tensor concatenated around it (data movement only: bit-exact).
- `F.pad` with negative amounts (U-Net's crop): slices, then the zero padding of the positive amounts.
- a slice with a step along H, W or L (`x[..., ::2, ::2]`, YOLOv5's Focus space-to-depth): the contiguous part
  then a 1 x 1 max pooling with that stride (a pick, no arithmetic).
- `torch.ones_like(x)`, `full_like`, `new_ones`, `new_full` in forward: constants (as `zeros_like` is).
- `aten.convolution` (a `torch.jit.trace`d conv after torch's TorchScript conversion): the conv handlers.
- `torch.max(x, torch.zeros_like(x))` / `torch.minimum(x, torch.ones_like(x))`: a constant operand whose
  elements are all equal is a scalar, so the max / min is a clamp.
- `torch.cat` of rank-5 tensors (YOLO heads): viewed as rank 4 around the cat dim, one cat, viewed back.
- `nn.ChannelShuffle`, `torch.stack` (unsqueeze + cat), `x ** 2` (x * x), `nn.Softsign` (matched as export writes
  it, x / (1 + |x|): one table), `nn.MaxPool2d(return_indices=True)` when only the values are read.
- `F.normalize` / `torch.norm` (an L2 norm): refused by name with what to do.

Decompositions build scratch FX nodes (`_steps`): the user's program is untouched; names and errors carry the
user's call site and module.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..errors import UserError
from ..ir import Op
from .torch_export import _cat as _cat4
from .torch_export import _err, _extremum, _pad, _same, _slice, _steps, _torch_sizes, _unary

aten = torch.ops.aten


def _arg(n, i: int, name: str, default: Any) -> Any:
    return n.args[i] if len(n.args) > i else n.kwargs.get(name, default)


def _table(fn: str, **params: tuple[int, str, float]) -> Callable:
    """A LUT node for an element-wise function; params: attr -> (position, kwarg name, default)."""
    def handler(lw, n) -> str:
        attrs = {k: float(_arg(n, i, name, d)) for k, (i, name, d) in params.items()}
        return _unary(lw, n, Op.LUT, fn=fn, **attrs)
    return handler


def _rrelu(lw, n) -> str:
    """nn.RReLU in eval: a LeakyReLU with slope (lower + upper) / 2 (PyTorch's eval rule)."""
    lower, upper = float(_arg(n, 1, "lower", 1.0 / 8)), float(_arg(n, 2, "upper", 1.0 / 3))
    if bool(_arg(n, 3, "training", False)):
        raise _err(lw, n, "RReLU with training=True draws random slopes; qgen compiles the eval rule (slope "
                          "(lower + upper) / 2). Call model.eval() or pass training=False")
    return _unary(lw, n, Op.LUT, fn="leaky_relu", alpha=(lower + upper) / 2.0)


def _threshold(lw, n) -> str:
    """nn.Threshold(th, value): x if x > th else value; Threshold(0, 0) is a ReLU."""
    th, value = float(n.args[1]), float(n.args[2])
    if th == 0.0 and value == 0.0:
        return _unary(lw, n, Op.RELU, lo=0.0, hi=None)
    return _unary(lw, n, Op.LUT, fn="threshold", threshold=th, value=value)


def _pixel_shuffle(lw, n) -> str:
    """nn.PixelShuffle(r) / F.pixel_shuffle: (1, C*r*r, H, W) -> (1, C, H*r, W*r), as
    x.view(1, C, r, r, H, W).permute(0, 1, 4, 2, 5, 3).reshape(1, C, H*r, W*r) (a layout change)."""
    x, r = n.args[0], int(n.args[1])
    b, crr, h, w = _torch_sizes(x)
    c = crr // (r * r)
    step = _steps(lw, n)
    v = step("split", aten.view.default, (x, [b, c, r, r, h, w]), (b, c, r, r, h, w))
    p = step("order", aten.permute.default, (v, [0, 1, 4, 2, 5, 3]), (b, c, h, r, w, r))
    out = step("image", aten.reshape.default, (p, [b, c, h * r, w * r]), (b, c, h * r, w * r))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _pixel_unshuffle(lw, n) -> str:
    """F.pixel_unshuffle(x, r) / nn.PixelUnshuffle (space-to-depth): (1, C, H*r, W*r) -> (1, C*r*r, H, W)."""
    x, r = n.args[0], int(n.args[1])
    b, c, hr, wr = _torch_sizes(x)
    h, w = hr // r, wr // r
    step = _steps(lw, n)
    v = step("split", aten.view.default, (x, [b, c, h, r, w, r]), (b, c, h, r, w, r))
    p = step("order", aten.permute.default, (v, [0, 1, 3, 5, 2, 4]), (b, c, r, r, h, w))
    out = step("depth", aten.reshape.default, (p, [b, c * r * r, h, w]), (b, c * r * r, h, w))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


EDGE_MODES = ("reflect", "replicate", "circular")


def _edge_pad(lw, n) -> Any:
    """F.pad(x, pad, mode='reflect' | 'replicate' | 'circular') (what Conv1d/Conv2d with that padding_mode run):
    along each padded dim, slices of x concatenated before and after it (reflect: x[1], ..., x[p] mirrored;
    replicate: x[0] repeated; circular: the last p and the first p). Other modes go to the zero-padding handler."""
    mode = _arg(n, 2, "mode", "constant")
    if n.args[0].name in lw.lay and min(int(p) for p in n.args[1]) < 0 and len(n.args[1]) <= 2 * (
            len(_torch_sizes(n.args[0])) - 2):
        return _crop(lw, n)
    if n.target is not aten.pad.default or mode not in EDGE_MODES:
        return _pad(lw, n)
    x, pad = n.args[0], [int(p) for p in n.args[1]]
    sizes = list(_torch_sizes(x))
    if len(pad) % 2 or len(pad) // 2 > len(sizes) - 2 or min(pad) < 0:
        raise _err(lw, n, f"padding {pad} in mode '{mode}'; qgen pads the spatial dims (H, W or L) by "
                          "non-negative amounts")
    step = _steps(lw, n)
    cur = x
    for k in range(len(pad) // 2):
        dim, (before, after) = len(sizes) - 1 - k, (pad[2 * k], pad[2 * k + 1])
        if before == 0 and after == 0:
            continue
        size = sizes[dim]
        if mode == "reflect" and max(before, after) >= size:
            raise _err(lw, n, f"reflect padding of {max(before, after)} on a dim of size {size}; PyTorch needs "
                              "padding < size")

        def cut(tag: str, start: int, length: int, src=cur, dim=dim) -> torch.fx.Node:
            shape = tuple(sizes[:dim] + [length] + sizes[dim + 1:])
            return step(f"d{dim}_{tag}", aten.slice.Tensor, (src, dim, start, start + length), shape)

        if mode == "circular":
            head = [cut("before", size - before, before)] if before else []
            tail = [cut("after", 0, after)] if after else []
        elif mode == "replicate":
            head = [cut("before", 0, 1)] * before
            tail = [cut("after", size - 1, 1)] * after
        else:  # reflect: before = x[before], ..., x[1]; after = x[size - 2], ..., x[size - 1 - after]
            head = [cut(f"before{i}", i, 1) for i in range(before, 0, -1)]
            tail = [cut(f"after{i}", size - 1 - i, 1) for i in range(1, after + 1)]
        sizes[dim] = size + before + after
        cur = step(f"d{dim}_{mode}", aten.cat.default, (head + [cur] + tail, dim), tuple(sizes))
    lw.lay[n.name] = lw.lay[cur.name]
    return lw.env[cur.name]


def _crop(lw, n) -> Any:
    """F.pad with negative amounts (U-Net's crop, F.pad(x, (-1, -1, -2, -1))): slices of the cropped dims, then
    the zero padding of the positive amounts, if any."""
    pad = [int(p) for p in n.args[1]]
    sizes = list(_torch_sizes(n.args[0]))
    step = _steps(lw, n)
    cur = n.args[0]
    for k in range(len(pad) // 2):
        dim, (before, after) = len(sizes) - 1 - k, (pad[2 * k], pad[2 * k + 1])
        cut_before, cut_after = max(-before, 0), max(-after, 0)
        if cut_before or cut_after:
            length = sizes[dim] - cut_before - cut_after
            if length <= 0:
                raise _err(lw, n, f"padding {pad} crops dim {dim} of size {sizes[dim]} to nothing")
            sizes[dim] = length
            cur = step(f"crop{dim}", aten.slice.Tensor, (cur, dim, cut_before, cut_before + length), tuple(sizes))
    rest = [max(p, 0) for p in pad]
    if any(rest):
        cur = step("pad", aten.pad.default, (cur, rest) + tuple(n.args[2:]), _torch_sizes(n))
    lw.lay[n.name] = lw.lay[cur.name]
    return lw.env[cur.name]


def _strided_slice(lw, n) -> Any:
    """x[..., a:b:s] along H, W (4-D) or the last dim (3-D, L) with s > 1 (YOLOv5's Focus, x[..., ::2, ::2]): the
    contiguous x[..., a:b] then a 1 x 1 max pooling with stride s, which picks every s-th element (no arithmetic)."""
    a = list(n.args) + [None] * (5 - len(n.args))
    s = a[4] if a[4] is not None else n.kwargs.get("step", 1)
    if s == 1 or n.args[0].name not in lw.lay:  # contiguous, or a constant (sliced on the constant)
        return _slice(lw, n)
    x = n.args[0]
    sizes = list(_torch_sizes(x))
    rank, dim = len(sizes), int(a[1] if a[1] is not None else n.kwargs.get("dim", 0)) % len(sizes)
    if not ((rank == 4 and dim in (2, 3)) or (rank == 3 and dim == 2)):
        raise _err(lw, n, f"slice with step {s} along dim {dim} of a rank-{rank} tensor; qgen takes every s-th "
                          "element along H or W of (N, C, H, W) or along L of (N, C, L) (space-to-depth, "
                          "x[..., ::2, ::2]). Slice contiguous ranges along other dims, or reorder with a permute")
    start, end, _ = slice(a[2], a[3]).indices(sizes[dim])
    if end <= start:
        raise _err(lw, n, f"empty slice [{start}:{end}:{s}] of dim {dim}; qgen needs at least one element")
    step = _steps(lw, n)
    part = x
    if (start, end) != (0, sizes[dim]):
        sizes[dim] = end - start
        part = step("part", aten.slice.Tensor, (x, dim, start, end), tuple(sizes))
    sizes[dim] = -(-sizes[dim] // s)
    if rank == 4:
        stride = [s, 1] if dim == 2 else [1, s]
        out = step("pick", aten.max_pool2d.default, (part, [1, 1], stride), tuple(sizes))
    else:
        out = step("pick", aten.max_pool1d.default, (part, [1], [s]), tuple(sizes))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _filled(lw, n) -> np.ndarray:
    """torch.ones_like(x) / full_like(x, v) / x.new_ones(size) / x.new_full(size, v) written in forward: a constant
    (0.5 * torch.ones_like(x) as a clamp bound)."""
    sizes = _torch_sizes(n)
    if sizes is None:
        raise _err(lw, n, f"dynamic shape {n.meta.get('val')}; qgen compiles fixed shapes")
    value = {aten.full_like.default: lambda: n.args[1], aten.new_full.default: lambda: n.args[2]}.get(
        n.target, lambda: 1.0)()
    return np.full(sizes, float(value), dtype=np.float64)


def _convolution(lw, n) -> Any:
    """aten.convolution (what a torch.jit.trace'd conv converts to): the conv1d / conv2d / conv_transpose handler."""
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = n.args[:9]
    rank = len(_torch_sizes(x))
    if transposed:
        target = aten.conv_transpose2d.input if rank == 4 else aten.conv_transpose1d.default
        args = (x, w, b, stride, padding, output_padding, groups, dilation)
    else:
        target = aten.conv2d.default if rank == 4 else aten.conv1d.default
        args = (x, w, b, stride, padding, dilation, groups)
    out = _steps(lw, n)("conv", target, args, _torch_sizes(n))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _channel_shuffle(lw, n) -> Any:
    """nn.ChannelShuffle(g) / F.channel_shuffle: x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W), as
    torchvision's ShuffleNetV2 writes it (a layout change)."""
    x, groups = n.args[0], int(n.args[1])
    sizes = _torch_sizes(x)
    b, c, rest = sizes[0], sizes[1], list(sizes[2:])
    step = _steps(lw, n)
    v = step("split", aten.view.default, (x, [b, groups, c // groups] + rest), (b, groups, c // groups, *rest))
    order = [0, 2, 1] + list(range(3, 3 + len(rest)))
    p = step("order", aten.permute.default, (v, order), (b, c // groups, groups, *rest))
    out = step("merge", aten.reshape.default, (p, list(sizes)), sizes)
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _stack(lw, n) -> Any:
    """torch.stack(xs, dim): each x unsqueezed at dim, then one torch.cat along dim."""
    xs, dim = n.args[0], int(_arg(n, 1, "dim", 0))
    sizes = list(_torch_sizes(n))
    dim %= len(sizes)
    if len(sizes) > 4:
        raise _err(lw, n, f"torch.stack makes a rank-{len(sizes)} tensor {sizes}; qgen's tensors have at most 4 dims "
                          "(N, C, H, W). Concatenate along an existing dim (torch.cat) instead")
    one = tuple(sizes[:dim] + [1] + sizes[dim + 1:])
    step = _steps(lw, n)
    parts = [step(f"part{i}", aten.unsqueeze.default, (x, dim), one) for i, x in enumerate(xs)]
    out = step("cat", aten.cat.default, (parts, dim), tuple(sizes))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _pow(lw, n) -> Any:
    """x ** 2 (YOLOv5's (y * 2) ** 2 box decode): x * x, a mul of two activations; x ** 1: x. Other exponents of an
    activation are refused with what to do (a constant is raised here)."""
    x, e = n.args[0], n.args[1]
    if x.name not in lw.lay:
        return np.power(lw.env[x.name], e)
    if e == 1:
        return _same(lw, n)
    if e != 2:
        raise _err(lw, n, f"x ** {e}; qgen computes x ** 2 (as x * x) and x ** 1. Write a higher integer power as "
                          "products (x * x * x), or replace the op")
    out = _steps(lw, n)("square", aten.mul.Tensor, (x, x), _torch_sizes(n))
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _softsign(lw, n) -> Any:
    """F.softsign / nn.Softsign, which export writes x / (1 + |x|): matched at the abs, one softsign table; the
    add and the div are filled ahead (lw.ready). Any other use of abs is the abs table."""
    x = n.args[0]
    add = next(iter(n.users)) if len(n.users) == 1 else None
    ok = add is not None and add.target in (aten.add.Tensor, aten.add.Scalar) and list(add.args) == [n, 1] \
        and len(add.users) == 1
    div = next(iter(add.users)) if ok else None
    if not (ok and div.target is aten.div.Tensor and list(div.args) == [x, add] and not div.kwargs):
        return _unary(lw, n, Op.LUT, fn="abs")
    out = _unary(lw, n, Op.LUT, fn="softsign")
    lw.ready[add.name] = (None, None)
    lw.ready[div.name] = (out, lw.lay[n.name])
    return out


def _max_pool_values(lw, n) -> Any:
    """F.max_pool2d(..., return_indices=True) / nn.MaxPool2d(return_indices=True): the values are a max pooling
    (the indices, for MaxUnpool2d, are refused where they are read)."""
    out = _steps(lw, n)("values", aten.max_pool2d.default, tuple(n.args), _torch_sizes(n))
    return (lw.env[out.name], None)  # read by getitem (VALUES_AND_INDICES), as max.dim's pair


def _cat(lw, n) -> Any:
    """torch.cat of rank-5+ tensors (a YOLO head's (N, anchors, H, W, 5 + classes) parts): each part viewed as
    (N, dims before, its dim, dims after) -> one rank-4 cat along dim 2 -> viewed back; rank <= 4: the cat handler."""
    parts, dim = list(n.args[0]), int(_arg(n, 1, "dim", 0))
    sizes = _torch_sizes(n)
    if sizes is None or len(sizes) <= 4 or any(x.name not in lw.lay for x in parts):
        return _cat4(lw, n)
    dim %= len(sizes)
    if dim == 0:
        return _cat4(lw, n)  # refused there (the batch dim)
    before, after = int(np.prod(sizes[1:dim])), int(np.prod(sizes[dim + 1:]))
    step = _steps(lw, n)
    flat = []
    for i, x in enumerate(parts):
        d = _torch_sizes(x)[dim]
        shape = (sizes[0], before, d, after)
        flat.append(step(f"part{i}", aten.view.default, (x, list(shape)), shape))
    joined = step("cat", aten.cat.default, (flat, 2), (sizes[0], before, sizes[dim], after))
    out = step("back", aten.view.default, (joined, list(sizes)), sizes)
    lw.lay[n.name] = lw.lay[out.name]
    return lw.env[out.name]


def _uniform(lw, arg) -> float | None:
    """The value of a constant tensor whose elements are all equal (torch.zeros_like(x)); None otherwise."""
    value = lw.env.get(arg.name) if isinstance(arg, torch.fx.Node) and arg.name not in lw.lay else None
    if isinstance(value, np.ndarray) and value.size and np.all(value == value.reshape(-1)[0]):
        return float(value.reshape(-1)[0])
    return None


def _bounded(op: Op) -> Callable:
    """torch.max / maximum / min / minimum: with a constant of equal elements (zeros_like(x), a scalar tensor)
    a clamp of the activation (lo for max, hi for min); otherwise the activations' MAXIMUM / MINIMUM."""
    two = _extremum(op)

    def handler(lw, n) -> str:
        a, b = n.args[0], n.args[1]
        ka, kb = _uniform(lw, a), _uniform(lw, b)
        if (ka is None) == (kb is None) or _torch_sizes(n) != _torch_sizes(a if kb is not None else b):
            return two(lw, n)
        x, k = (a, kb) if kb is not None else (b, ka)
        bounds = {"lo": k, "hi": None} if op is Op.MAXIMUM else {"lo": None, "hi": k}
        x_ir, lay = lw.raw(x)  # element-wise: in the layout x lies in (as _unary)
        return lw.bind(n, lw.add(n, Op.RELU, [x_ir], lw.shape_of(x_ir), **bounds), lay)
    return handler


def _norm(lw, n) -> Any:
    raise _err(lw, n, "an L2 norm (F.normalize, torch.norm, torch.linalg.vector_norm) divides by a computed "
                      "value; qgen supports division by constants only. Return the un-normalised tensor and "
                      "normalise on the device's CPU in float (the direction, hence cosine similarity and argmax, "
                      "is unchanged)")


HANDLERS: dict[Any, Callable] = {
    aten.feature_dropout.default: _same,
    aten.alpha_dropout.default: _same,
    aten.feature_alpha_dropout.default: _same,
    aten.mish.default: _table("mish"),
    aten.selu.default: _table("selu"),
    aten.celu.default: _table("celu", alpha=(1, "alpha", 1.0)),
    aten.log_sigmoid.default: _table("log_sigmoid"),
    aten.hardshrink.default: _table("hardshrink", lambd=(1, "lambd", 0.5)),
    aten.softshrink.default: _table("softshrink", lambd=(1, "lambd", 0.5)),
    aten.abs.default: _softsign,
    aten.rrelu.default: _rrelu,
    aten.threshold.default: _threshold,
    aten.pixel_shuffle.default: _pixel_shuffle,
    aten.pixel_unshuffle.default: _pixel_unshuffle,
    aten.pad.default: _edge_pad,
    aten.slice.Tensor: _strided_slice,
    aten.ones_like.default: _filled,
    aten.full_like.default: _filled,
    aten.new_ones.default: _filled,
    aten.new_full.default: _filled,
    aten.convolution.default: _convolution,
    aten.channel_shuffle.default: _channel_shuffle,
    aten.native_channel_shuffle.default: _channel_shuffle,
    aten.stack.default: _stack,
    aten.cat.default: _cat,
    aten.concat.default: _cat,
    aten.concatenate.default: _cat,
    aten.pow.Tensor_Scalar: _pow,
    aten.max_pool2d_with_indices.default: _max_pool_values,
    aten.maximum.default: _bounded(Op.MAXIMUM),
    aten.max.other: _bounded(Op.MAXIMUM),
    aten.minimum.default: _bounded(Op.MINIMUM),
    aten.min.other: _bounded(Op.MINIMUM),
    aten.linalg_vector_norm.default: _norm,
    aten.norm.ScalarOpt_dim: _norm,
}


# ---------------------------------------------------------------- modules as users hand them over (from_module)


def as_float32(model: torch.nn.Module) -> torch.nn.Module:
    """A model with float16 / bfloat16 / float64 weights (`.half()`, `.double()`): a float32 copy (qgen quantises
    from float32; the caller's model is unchanged). Others: the model itself."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return model
    import copy

    return copy.deepcopy(model).float()


def scripted_program(model: torch.jit.ScriptModule, example: torch.Tensor) -> torch.export.ExportedProgram:
    """A TorchScript module (torch.jit.script / trace, or torch.jit.load of a .pt) -> an ExportedProgram through
    torch's TS2EPConverter, in eval mode (the module's flags restored)."""
    from torch._export.converter import TS2EPConverter

    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        program = TS2EPConverter(model, (example,)).convert()  # dynamic sizes: exported again at the example's
        return torch.export.export(program.module(), (example,))
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise UserError(f"{model.original_name} is a TorchScript module (torch.jit.script / trace) and torch could "
                        f"not convert it to an exported program ({type(exc).__name__}: {msg[0] if msg else ''}). "
                        "Give qgen the Python nn.Module before scripting, or a torch.export program "
                        "(torch.export.save(torch.export.export(model, (x,)), 'model.pt2'))") from None
    finally:
        for m, flag in training.items():
            m.training = flag


def forward_arity_error(model: torch.nn.Module) -> str | None:
    """A forward() that needs more than one input: what to do (qgen's C takes one input buffer)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    needed = [p.name for p in params if p.default is inspect.Parameter.empty
              and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if len(needed) <= 1:
        return None
    return (f"{type(model).__name__}.forward takes {len(needed)} inputs ({', '.join(needed)}); qgen compiles a model "
            "with one input tensor (the C function reads one input buffer). Wrap it in a module whose forward(x) "
            "takes one tensor and slices it into the inputs (e.g. x[:, :3] and x[:, 3:]), or give the other "
            "inputs default values")
