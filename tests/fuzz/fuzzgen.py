"""Random small models of the ops qgen supports, and the check every one of them must pass.

A model is a *spec*: a JSON-able dict (input shape, a list of layers, weight/calibration seeds). The
hypothesis strategy `specs()` draws specs; `build_model` turns one into an `nn.Module`; `check_spec`
compiles it, builds the generated C with ASan/UBSan and compares the C with the integer reference
on extreme and random int8 inputs. A failing case is therefore a literal dict that can be pasted
into tests/fuzz/test_regressions.py and replayed without hypothesis.

Layer specs (`op` and its fields):
    conv      out, k [kh, kw], stride [sh, sw], pad [ph, pw], dil [dh, dw] (absent: 1), groups (absent: 1),
              bias, w, wexp, b, bexp
    dw        mult (depthwise multiplier), k, stride, pad, dil, bias, w, wexp, b, bexp
    linear    out, bias, w, wexp, b, bexp
    bn        kind ("normal" | "extreme": tiny variances, large and zero gammas); a vector BN that is
              not after a Linear becomes a channel_affine
    ln        kind ("normal" | "extreme": zero, tiny and large gammas, large betas): LayerNorm over all
              non-batch dims (vectors: the features; images: C, H, W)
    gn        groups (divides C), kind: GroupNorm (groups = C: InstanceNorm)
    bin       fn (mul | sub | max | min), body, relu: x OP body(x) (codegen/ops/eltwise.py)
    se        hidden, gate (sigmoid | hardsigmoid), weights: x * gate(1x1 conv(relu(1x1 conv(mean(x)))))
    scalar    fn (mul | div | add | rsub | neg), c: x * c, x / c, x + c, c - x, -x (an affine op)
    const     fn (add | rsub | mul | max), kind (normal | extreme: +-127/64 | huge | tiny), bcast: x + C, C - x,
              x * C, max(x, C) with a constant buffer of x's shape (bcast, images: (1, 1, H, W)); codegen/ops/const.py
    prelu     per_channel, kind (normal | negative | big): nn.PReLU slopes
    relu | relu6 | hardtanh lo hi | clamp lo hi
    maxpool   k, stride, pad, ceil      avgpool  k, stride, pad, include_pad, ceil (ceil_mode; absent: False)
    adaptive  out [oh, ow] (any size), kind ("avg" | "max"; absent: avg)
    gap       how ("mean" | "mean_keepdim" | "adaptive" | "amax" | "max_adaptive")
    creduce   kind ("mean" | "max"): over the channels, keepdim (one channel left)
    flatten   (an image to a vector)
    res       body (shape-preserving layers; [] is x + x), relu: y = x + body(x) (then ReLU)
    cat       body: y = torch.cat([x, body(x)], dim=1) (channels / features double)
    pad       pad [left, right, top, bottom] (F.pad, zeros)
    lut       fn: sigmoid | tanh | hardsigmoid | hardswish | silu | gelu | gelu_tanh | leaky_relu | elu
    softmax   over channels (images) or features (vectors); log: log_softmax instead
    rnn       kind (gru | lstm | rnn_tanh | rnn_relu), hidden, layers (1-2), bi, bias, h0 (a constant initial
              state buffer), wexp, read (out: the sequence (T, D*H) | last: out[:, -1] | h_n: h_n[-1]), on a
              sequence input [T, F] (PyTorch (1, T, F), batch_first)
Weight kinds `w`: normal, extreme (every entry +-max: quantises to exactly +-127), zero, onehot
(one large entry), channels (output channels at scales 1e-4..1e4); `wexp`: the whole tensor times
10**wexp. Bias kinds `b`: zero, normal, huge, tiny; `bexp` likewise.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

from codegen import compile as qcompile
from codegen.errors import UserError
from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native
from codegen.hostcheck import verify as host_verify

PREFIX = "fz"

# Refusals that are correct answers for a random model: the message names the layer and the fix.
# Anything else (another UserError text, or any other exception) fails the fuzz test.
EXPECTED_REFUSALS = (
    "needs a requantisation shift",  # weights/activations too far apart for a 31-bit shift
    "the int32 accumulator can overflow",  # fan-in too large even at the coarsest weight format
    "does not fit the kernel's",  # a size beyond a kernel struct field (e.g. > 65535 inputs)
    "recurrent weights too large for int8",  # a recurrent layer's weights need a format beyond the shifts
)

# Open bugs (each has a strict-xfail reproducer in test_regressions.py). The generator avoids the
# first; the second is recognised by its message and counted instead of failing the run. Remove an
# entry when its bug is fixed, so that the fuzzer checks the case again.
AVOID_DUPLICATE_OUTPUTS = False  # fixed (passes/separate_outputs.py); `return y, y` / `return y, y.flatten(1)`: one output copy is never written
KNOWN_BUGS: dict = {}  # name -> re.Pattern of the exception text; none open


# ------------------------------------------------------------------------------------ limits


@dataclass(frozen=True)
class Limits:
    max_hw: int = 12  # input height/width
    max_c: int = 4  # input channels
    max_ch: int = 6  # conv output channels
    max_f: int = 40  # input features / linear outputs
    max_layers: int = 6  # top-level layers
    max_body: int = 2  # layers in a residual body


QUICK = Limits()
LONG = Limits(max_hw=20, max_c=6, max_ch=12, max_f=96, max_layers=9, max_body=3)


# ------------------------------------------------------------------------------------ strategy


def _out(size: int, k: int, s: int, p: int, ceil: bool = False) -> int:
    """PyTorch's output size (ceil_mode: the last window starts inside the input or the left padding)."""
    out = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    return out - 1 if ceil and (out - 1) * s >= size + p else out


@st.composite
def _weights(draw) -> dict:
    w = draw(st.sampled_from(["normal"] * 4 + ["extreme", "zero", "onehot", "channels"]))
    wexp = draw(st.sampled_from([0] * 8 + [-4, -2, 2, 4, -12, 8]))
    b = draw(st.sampled_from(["normal", "normal", "zero", "huge", "tiny"]))
    bexp = draw(st.sampled_from([0] * 4 + [-3, 3]))
    return {"bias": draw(st.booleans()) or b != "normal", "w": w, "wexp": wexp, "b": b, "bexp": bexp}


@st.composite
def _window(draw, h: int, w: int, max_k: int, pool: bool) -> dict | None:
    """Kernel, stride, padding (per dimension) with an output of at least 1x1; torch's pool rule pad <= k/2.
    Convolutions also draw a dilation (1 mostly; 2, 3)."""
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph = draw(st.integers(0, kh // 2 if pool else 2))
    pw = draw(st.integers(0, kw // 2 if pool else 2))
    kh, kw = min(kh, h + 2 * ph), min(kw, w + 2 * pw)
    if pool:
        ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    dil = [1, 1] if pool else [draw(st.sampled_from([1, 1, 1, 2, 3])) for _ in range(2)]
    win = {"k": [kh, kw], "stride": [sh, sw], "pad": [ph, pw], **({"dil": dil} if dil != [1, 1] else {})}
    if _out(h, *_kph(win, 0)) < 1 or _out(w, *_kph(win, 1)) < 1:
        return None
    return win


LUT_FNS = ("sigmoid", "tanh", "hardsigmoid", "hardswish", "silu", "gelu", "gelu_tanh", "leaky_relu", "elu")


def _act_layer(draw) -> dict:
    op = draw(st.sampled_from(["relu", "relu", "relu6", "hardtanh", "clamp", "lut", "lut"]))
    if op == "lut":
        return {"op": "lut", "fn": draw(st.sampled_from(LUT_FNS))}
    if op in ("hardtanh", "clamp"):
        lo = draw(st.sampled_from([-1.0, -0.5, 0.0, 0.25]))
        hi = draw(st.sampled_from([0.5, 1.0, 2.0, 6.0]))
        return {"op": op, "lo": lo, "hi": hi}
    return {"op": op}


@st.composite
def _image_body(draw, shape: tuple[int, int, int], lim: Limits) -> list[dict]:
    """Layers that keep the (C, H, W) shape, for the branch of a residual add."""
    c = shape[0]
    body: list[dict] = []
    for _ in range(draw(st.integers(0, lim.max_body))):
        kind = draw(st.sampled_from(["conv", "conv", "dw", "bn", "act", "maxpool", "avgpool"]))
        kh, kw = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
        same = {"k": [kh, kw], "stride": [1, 1], "pad": [kh // 2, kw // 2]}
        if kind == "conv":
            body.append({"op": "conv", "out": c, **same, **draw(_weights())})
        elif kind == "dw":
            body.append({"op": "dw", "mult": 1, **same, **draw(_weights())})
        elif kind == "bn":
            body.append({"op": "bn", "kind": draw(st.sampled_from(["normal", "extreme"]))})
        elif kind == "act":
            body.append(_act_layer(draw))
        else:
            body.append({"op": kind, **same, **({"include_pad": True} if kind == "avgpool" else {})})
    return body


@st.composite
def _arith_layer(draw, shape: tuple[int, ...], lim: Limits) -> dict:
    """Arithmetic of activations (codegen/ops/eltwise.py): mul/sub/max/min of x and a branch, an SE gate, a
    scalar affine, PReLU."""
    kind = draw(st.sampled_from(["bin", "bin", "scalar", "prelu", "const"] + (["se", "se"] if len(shape) == 3 else [])))
    if kind == "const":
        return {"op": "const", "fn": draw(st.sampled_from(["add", "add", "rsub", "mul", "max"])),
                "kind": draw(st.sampled_from(["normal", "normal", "extreme", "huge", "tiny"])),
                "bcast": len(shape) == 3 and draw(st.booleans())}
    if kind == "bin":
        if len(shape) == 3:
            body = draw(_image_body(shape, lim))
        else:
            body = [{"op": "linear", "out": shape[0], **draw(_weights())}] if draw(st.booleans()) else []
            body += [_act_layer(draw)] if draw(st.booleans()) else []
        return {"op": "bin", "fn": draw(st.sampled_from(["mul", "mul", "sub", "max", "min"])), "body": body,
                "relu": draw(st.booleans()),  # bcast: the branch averaged over a dim (keepdim), broadcast back
                "bcast": draw(st.sampled_from([None, None, 1] + ([2, 3] if len(shape) == 3 else []))),
                "first": draw(st.booleans())}
    if kind == "scalar":
        return {"op": "scalar", "fn": draw(st.sampled_from(["mul", "div", "add", "rsub", "neg"])),
                "c": draw(st.sampled_from([0.5, 2.0, 6.0, 3.0, -1.5, 1 / 3, 100.0, 1e-3]))}
    if kind == "prelu":
        return {"op": "prelu", "per_channel": draw(st.booleans()),
                "kind": draw(st.sampled_from(["normal", "negative", "big"]))}
    return {"op": "se", "hidden": draw(st.integers(1, 4)), "gate": draw(st.sampled_from(["sigmoid", "hardsigmoid"])),
            **draw(_weights())}


@st.composite
def specs(draw, lim: Limits = QUICK) -> dict:
    image = draw(st.integers(0, 3)) > 0  # images 3:1
    if image:
        shape: tuple[int, ...] = (draw(st.integers(1, lim.max_c)), draw(st.integers(1, lim.max_hw)),
                                  draw(st.integers(1, lim.max_hw)))
    elif draw(st.integers(0, 2)) == 0:  # a sequence (T, F) for recurrent layers
        shape = (draw(st.integers(1, lim.max_hw)), draw(st.integers(1, 2 * lim.max_c)))
    else:
        shape = (draw(st.integers(1, lim.max_f)),)
    spec: dict = {"input": list(shape), "layers": [], "taps": [], "seed": draw(st.integers(0, 2**16)),
                  "calib": {"n": draw(st.integers(1, 16)), "seed": draw(st.integers(0, 2**16)),
                            "kind": draw(st.sampled_from(["normal", "normal", "uniform", "const", "zeros"])),
                            "exp": draw(st.sampled_from([0, 0, 0, -3, -1, 1, 3]))}}
    layers = spec["layers"]
    for _ in range(draw(st.integers(1, lim.max_layers))):
        if len(shape) == 2:  # a sequence: recurrent layers (or an activation); a vector after the last read
            if draw(st.integers(0, 4)) == 0:
                layers.append(_act_layer(draw))
                continue
            layer = {"op": "rnn", "kind": draw(st.sampled_from(["gru", "lstm", "rnn_tanh", "rnn_relu"])),
                     "hidden": draw(st.integers(1, lim.max_ch + 2)), "layers": draw(st.integers(1, 2)),
                     "bi": draw(st.integers(0, 3)) == 0, "bias": draw(st.integers(0, 3)) > 0,
                     "h0": draw(st.booleans()), "wexp": draw(st.sampled_from([0, 0, 0, -1, 1])),
                     "read": draw(st.sampled_from(["out", "last", "h_n"]))}
            layers.append(layer)
            shape = layer_shape(layer, shape)
            continue
        if draw(st.integers(0, 5)) == 0:  # arithmetic ops keep the shape
            layers.append(draw(_arith_layer(shape, lim)))
            continue
        if len(shape) == 3:
            c, h, w = shape
            op = draw(st.sampled_from(["conv", "conv", "conv", "dw", "dw", "bn", "act", "act", "maxpool", "avgpool",
                                       "adaptive", "res", "res", "cat", "pad", "softmax", "gap", "flatten",
                                       "creduce", "shuffle", "split", "crop",
                                       "convt", "up", "norm"]))
            if op == "conv":
                win = draw(_window(h, w, 5, pool=False))
                if win is None:
                    continue
                out = draw(st.integers(1, lim.max_ch))
                groups = draw(st.sampled_from([1, 1] + [d for d in range(2, c + 1) if c % d == 0]))
                out = groups * max(1, out // groups)  # grouped: out a multiple of groups
                layers.append({"op": "conv", "out": out, **win, **({"groups": groups} if groups > 1 else {}),
                               **draw(_weights())})
                shape = (layers[-1]["out"], _out(h, *_kph(win, 0)), _out(w, *_kph(win, 1)))
            elif op == "dw":
                win = draw(_window(h, w, 5, pool=False))
                mult = draw(st.integers(1, 3))
                if win is None or c * mult > 2 * lim.max_ch:
                    continue
                layers.append({"op": "dw", "mult": mult, **win, **draw(_weights())})
                shape = (c * mult, _out(h, *_kph(win, 0)), _out(w, *_kph(win, 1)))
            elif op == "bn":
                layers.append({"op": "bn", "kind": draw(st.sampled_from(["normal", "normal", "extreme"]))})
            elif op == "norm":  # GroupNorm (InstanceNorm when groups = C) or LayerNorm over (C, H, W)
                kind = draw(st.sampled_from(["normal", "normal", "extreme"]))
                # PyTorch's group_norm refuses a group of one value (C/G * H * W == 1)
                groups_ok = [d for d in range(1, c + 1) if c % d == 0 and (c // d) * h * w > 1]
                if groups_ok and draw(st.booleans()):
                    layers.append({"op": "gn", "groups": draw(st.sampled_from(groups_ok)), "kind": kind})
                else:
                    layers.append({"op": "ln", "kind": kind})
            elif op == "act":
                layers.append(_act_layer(draw))
            elif op == "convt":  # ConvTranspose2d: output (h - 1) * s - 2 p + k + output_padding
                k = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
                s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
                dil = [draw(st.sampled_from([1, 1, 2, 3])) if k[i] > 1 else 1 for i in range(2)]
                p = [draw(st.integers(0, (dil[i] * (k[i] - 1)) // 2)) for i in range(2)]
                op_ = [draw(st.integers(0, max(s[i], dil[i]) - 1)) for i in range(2)]  # torch: < max(stride, dil)
                gr = draw(st.sampled_from([d for d in (1, 1, 1, 2, 3, shape[0]) if shape[0] % d == 0]))
                layer = {"op": "convt", "out": gr * draw(st.integers(1, max(1, lim.max_ch // gr))), "k": k,
                         "stride": s, "pad": p, "opad": op_, **draw(_weights()), **({"groups": gr} if gr > 1 else {}),
                         **({"dil": dil} if dil != [1, 1] else {})}
                new = layer_shape(layer, shape)
                if min(new[1:]) < 1 or new[1] * new[2] > 4 * lim.max_hw * lim.max_hw:
                    continue
                layers.append(layer)
                shape = new
            elif op == "up":  # Upsample / interpolate: nearest, nearest-exact, bilinear (both corner rules)
                mode = draw(st.sampled_from(["nearest", "nearest", "nearest-exact", "bilinear", "bilinear_ac"]))
                how = draw(st.sampled_from(["scale", "scale", "size"]))
                if how == "scale":
                    layer = {"op": "up", "mode": mode, "scale": draw(st.sampled_from([2.0, 2.0, 3.0, 1.5, 0.5]))}
                else:
                    layer = {"op": "up", "mode": mode, "size": [draw(st.integers(1, 2 * lim.max_hw)),
                                                                draw(st.integers(1, 2 * lim.max_hw))]}
                new = layer_shape(layer, shape)
                if min(new[1:]) < 1:
                    continue
                layers.append(layer)
                shape = new
            elif op in ("maxpool", "avgpool"):
                win = draw(_window(h, w, 3, pool=True))
                if win is None:
                    continue
                extra = {"ceil": draw(st.booleans())}
                if op == "avgpool":
                    extra["include_pad"] = draw(st.booleans())
                layers.append({"op": op, **win, **extra})
                shape = layer_shape(layers[-1], shape)
            elif op == "adaptive":  # any output size: uneven windows where the sizes do not divide
                oh, ow = draw(st.integers(1, h + 1)), draw(st.integers(1, w + 1))
                layers.append({"op": "adaptive", "out": [oh, ow], "kind": draw(st.sampled_from(["avg", "max"]))})
                shape = (c, oh, ow)
            elif op == "creduce":
                layers.append({"op": "creduce", "kind": draw(st.sampled_from(["mean", "max"]))})
                shape = (1, h, w)
            elif op == "res":
                layers.append({"op": "res", "body": draw(_image_body(shape, lim)), "relu": draw(st.booleans())})
            elif op == "cat":
                if 2 * c > 2 * lim.max_ch:
                    continue
                layers.append({"op": "cat", "body": draw(_image_body(shape, lim))})
                shape = (2 * c, h, w)
            elif op == "pad":
                pad = [draw(st.integers(0, 2)) for _ in range(4)]
                layers.append({"op": "pad", "pad": pad})
                shape = (c, h + pad[2] + pad[3], w + pad[0] + pad[1])
            elif op == "softmax":
                layers.append({"op": "softmax", "log": draw(st.booleans())})
            elif op == "shuffle":  # channel shuffle: view to 5-D, transpose, view back (one TRANSPOSE)
                groups = [g for g in range(2, c) if c % g == 0]  # g = c or 1: no shuffle
                if not groups:
                    continue
                layers.append({"op": "shuffle", "groups": draw(st.sampled_from(groups))})
            elif op == "split":  # channel split and swap (ShuffleNetV2): two SLICEs and a concat
                if c < 2:
                    continue
                layers.append({"op": "split", "at": draw(st.integers(1, c - 1))})
            elif op == "crop":  # a slice of rows or columns (x[:, :, a:b] / x[..., a:b])
                dim = draw(st.sampled_from([2, 3]))
                size = h if dim == 2 else w
                if size < 2:
                    continue
                length = draw(st.integers(1, size - 1))
                layers.append({"op": "crop", "dim": dim, "start": draw(st.integers(0, size - length)),
                               "length": length})
                shape = (c, length, w) if dim == 2 else (c, h, length)
            elif op == "gap":
                layers.append({"op": "gap", "how": draw(st.sampled_from(["mean", "mean_keepdim", "adaptive", "amax",
                                                                          "max_adaptive"]))})
                shape = (c,)
            else:
                layers.append({"op": "flatten"})
                shape = (c * h * w,)
        else:
            (f,) = shape
            op = draw(st.sampled_from(["linear", "linear", "linear", "act", "bn", "res", "cat", "softmax", "ln"]))
            if op == "linear":
                if f > 4 * lim.max_f and draw(st.booleans()):
                    continue
                layers.append({"op": "linear", "out": draw(st.integers(1, lim.max_f)), **draw(_weights())})
                shape = (layers[-1]["out"],)
            elif op == "bn":  # folded into a Linear before it, else a channel_affine
                layers.append({"op": "bn", "kind": draw(st.sampled_from(["normal", "extreme"]))})
            elif op == "ln":
                layers.append({"op": "ln", "kind": draw(st.sampled_from(["normal", "normal", "extreme"]))})
            elif op == "act":
                layers.append(_act_layer(draw))
            elif op == "softmax":
                layers.append({"op": "softmax", "log": draw(st.booleans())})
            elif op == "cat" and 2 * f <= 4 * lim.max_f:
                layers.append({"op": "cat", "body": [_act_layer(draw)] if draw(st.booleans()) else []})
                shape = (2 * f,)
            elif op == "res":
                body = []
                if draw(st.booleans()):
                    body.append({"op": "linear", "out": f, **draw(_weights())})
                    if draw(st.booleans()):
                        body.append({"op": "bn", "kind": "normal"})
                if draw(st.booleans()):
                    body.append(_act_layer(draw))
                layers.append({"op": "res", "body": body, "relu": draw(st.booleans())})
    if not layers and len(shape) > 1:  # every image-layer draw was skipped: a Linear needs a flat vector
        layers.append({"op": "flatten"})
    if not layers or layers[-1]["op"] == "flatten":  # a flatten alone computes nothing
        layers.append({"op": "linear", "out": draw(st.integers(1, 10)), **draw(_weights())})
    if len(layers) > 1 and draw(st.integers(0, 4)) == 0:  # a second output: an intermediate tensor
        spec["taps"] = [draw(st.integers(0, len(layers) - (2 if AVOID_DUPLICATE_OUTPUTS else 1)))]
        if not tap_ok(spec):
            spec["taps"] = []
    if draw(st.booleans()) and len(spec["input"]) != 2:  # mixed precision: a random subset of layers at int16
        spec["wide"] = draw(st.integers(0, 2**16))
    return spec


def _kph(win: dict, axis: int) -> tuple[int, int, int]:
    """(extent of the (dilated) window, stride, padding) along one axis."""
    return win.get("dil", [1, 1])[axis] * (win["k"][axis] - 1) + 1, win["stride"][axis], win["pad"][axis]


def tap_ok(spec: dict) -> bool:
    """An extra output must be a tensor qgen can return: not a flattened image."""
    (i,) = spec["taps"]
    layers = spec["layers"]
    after = layers[i + 1]["op"] if i + 1 < len(layers) else None
    if layers[i]["op"] == "flatten":  # a flattened image as output: refused, or an alias of the input
        return False
    if AVOID_DUPLICATE_OUTPUTS and after == "flatten":  # the flatten output aliases the tapped tensor
        return False
    return True


def spec_shape_before(spec: dict, index: int) -> tuple[int, ...]:
    shape = tuple(spec["input"])
    for layer in spec["layers"][:index]:
        shape = layer_shape(layer, shape)
    return shape


def layer_shape(layer: dict, shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch shape (without batch) after one layer."""
    op = layer["op"]
    if op in ("conv", "dw", "maxpool", "avgpool"):
        c = layer["out"] if op == "conv" else shape[0] * layer["mult"] if op == "dw" else shape[0]
        ceil = layer.get("ceil", False)
        return (c, _out(shape[1], *_kph(layer, 0), ceil), _out(shape[2], *_kph(layer, 1), ceil))
    if op == "adaptive":
        return (shape[0], *layer["out"])
    if op == "creduce":
        return (1, *shape[1:])
    if op == "convt":
        dil = layer.get("dil", [1, 1])
        return (layer["out"], *((shape[1 + i] - 1) * layer["stride"][i] - 2 * layer["pad"][i]
                                + dil[i] * (layer["k"][i] - 1) + 1 + layer["opad"][i] for i in range(2)))
    if op == "up":
        if "size" in layer:
            return (shape[0], *layer["size"])
        return (shape[0], *(int(math.floor(d * layer["scale"])) for d in shape[1:]))
    if op == "rnn":
        width = layer["hidden"] * (2 if layer["bi"] else 1)
        return (shape[0], width) if layer["read"] == "out" else (width,)
    if op == "gap":
        return (shape[0],)
    if op == "flatten":
        return (math.prod(shape),)
    if op == "linear":
        return (layer["out"],)
    if op == "cat":
        return (2 * shape[0], *shape[1:])
    if op == "pad":
        left, right, top, bottom = layer["pad"]
        return (shape[0], shape[1] + top + bottom, shape[2] + left + right)
    if op == "crop":
        out = list(shape)
        out[layer["dim"] - 1] = layer["length"]
        return tuple(out)
    return shape


# ------------------------------------------------------------------------------------ model


class Clamp(nn.Module):
    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return torch.clamp(x, self.lo, self.hi)


class GlobalMean(nn.Module):
    def __init__(self, keepdim: bool, amax: bool = False):
        super().__init__()
        self.keepdim, self.amax = keepdim, amax

    def forward(self, x):
        y = x.amax((2, 3), keepdim=self.keepdim) if self.amax else x.mean((2, 3), keepdim=self.keepdim)
        return torch.flatten(y, 1) if self.keepdim else y


class ChannelReduce(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return x.mean(1, keepdim=True) if self.kind == "mean" else x.amax(1, keepdim=True)


class Residual(nn.Module):
    def __init__(self, body: nn.Sequential, relu: bool):
        super().__init__()
        self.body, self.relu = body, relu

    def forward(self, x):
        y = x + self.body(x)
        return torch.relu(y) if self.relu else y


class Cat(nn.Module):
    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


class Pad(nn.Module):
    def __init__(self, pad: list[int]):
        super().__init__()
        self.pad = tuple(pad)

    def forward(self, x):
        return torch.nn.functional.pad(x, self.pad)


class Softmax(nn.Module):
    def __init__(self, log: bool = False):
        super().__init__()
        self.log = log

    def forward(self, x):
        return torch.log_softmax(x, dim=1) if self.log else torch.softmax(x, dim=1)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class SplitSwap(nn.Module):
    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def forward(self, x):
        a, b = x.split([self.at, x.shape[1] - self.at], dim=1)
        return torch.cat([b, a], dim=1)


class Crop(nn.Module):
    def __init__(self, dim: int, start: int, length: int):
        super().__init__()
        self.dim, self.start, self.length = dim, start, length

    def forward(self, x):
        return x.narrow(self.dim, self.start, self.length)


LUT_MODULES = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hardsigmoid": nn.Hardsigmoid, "hardswish": nn.Hardswish,
               "silu": nn.SiLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
               "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": nn.ELU}


class Binary(nn.Module):
    def __init__(self, body: nn.Sequential, fn: str, relu: bool, bcast: int | None = None, first: bool = False):
        super().__init__()
        self.body, self.fn, self.relu, self.bcast, self.first = body, fn, relu, bcast, first

    def forward(self, x):
        fn = {"mul": torch.mul, "sub": torch.sub, "max": torch.maximum, "min": torch.minimum}[self.fn]
        b = self.body(x)
        if self.bcast is not None:  # broadcasting: (1, 1, H, W), (1, C, 1, W), (1, C, H, 1); (1, 1) of a vector
            b = b.mean(self.bcast, keepdim=True)
        y = fn(b, x) if self.bcast is not None and self.first else fn(x, b)
        return torch.relu(y) if self.relu else y


class Scalar(nn.Module):
    def __init__(self, fn: str, c: float):
        super().__init__()
        self.fn, self.c = fn, c

    def forward(self, x):
        c = self.c
        return {"mul": lambda: x * c, "div": lambda: x / c, "add": lambda: x + c, "rsub": lambda: c - x,
                "neg": lambda: -x}[self.fn]()


class ConstOperand(nn.Module):
    """x OP C with C a constant buffer (a positional-encoding-like tensor): codegen/ops/const.py."""

    def __init__(self, shape: tuple[int, ...], layer: dict, rng: np.random.Generator):
        super().__init__()
        self.fn = layer["fn"]
        size = (1, 1, *shape[1:]) if layer["bcast"] else (1, *shape)
        value = {"normal": lambda: rng.standard_normal(size),
                 "extreme": lambda: np.where(rng.random(size) < 0.5, -1.0, 1.0) * 127 / 64,
                 "huge": lambda: rng.standard_normal(size) * 1e3, "tiny": lambda: rng.standard_normal(size) * 1e-4}
        self.register_buffer("c", torch.from_numpy(value[layer["kind"]]()).float())

    def forward(self, x):
        c = self.c
        return {"add": lambda: x + c, "rsub": lambda: c - x, "mul": lambda: x * c,
                "max": lambda: torch.maximum(x, c)}[self.fn]()


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, hidden: int, gate: str, bias: bool):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, hidden, 1, bias=bias), nn.Conv2d(hidden, c, 1, bias=bias), gate

    def forward(self, x):
        s = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * (torch.sigmoid(s) if self.gate == "sigmoid" else nn.functional.hardsigmoid(s))


class SpecNet(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.taps = set(spec.get("taps", []))
        rng = np.random.default_rng(spec["seed"])
        self.layers = nn.ModuleList()
        shape = tuple(spec["input"])
        for layer in spec["layers"]:
            self.layers.append(_module(layer, shape, rng))
            shape = layer_shape(layer, shape)

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return tuple(outs + [x]) if outs else x


class Recurrent(nn.Module):
    """nn.GRU / nn.LSTM / nn.RNN (batch_first) read as `read` says, with an optional constant initial state."""

    def __init__(self, layer: dict, features: int, rng: np.random.Generator):
        super().__init__()
        cls = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}[layer["kind"]]
        extra = {"nonlinearity": layer["kind"][4:]} if layer["kind"].startswith("rnn") else {}
        self.r = cls(features, layer["hidden"], num_layers=layer["layers"], bias=layer["bias"], batch_first=True,
                     bidirectional=layer["bi"], **extra)
        scale = 10.0 ** layer["wexp"] / math.sqrt(layer["hidden"])
        with torch.no_grad():
            for p in self.r.parameters():
                p.copy_(torch.from_numpy(rng.uniform(-scale, scale, tuple(p.shape))))
        self.read, self.lstm = layer["read"], layer["kind"] == "lstm"
        states = layer["layers"] * (2 if layer["bi"] else 1)
        h0 = rng.uniform(-0.5, 0.5, (2, states, 1, layer["hidden"])) if layer["h0"] else None
        self.register_buffer("h0", None if h0 is None else torch.tensor(h0[0], dtype=torch.float32))
        self.register_buffer("c0", None if h0 is None else torch.tensor(h0[1], dtype=torch.float32))

    def forward(self, x):
        if self.h0 is None:
            y, h = self.r(x)
        else:
            y, h = self.r(x, (self.h0, self.c0) if self.lstm else self.h0)
        if self.read == "out":
            return y
        if self.read == "last":
            return y[:, -1]
        h = h[0] if self.lstm else h
        return torch.cat([h[-2], h[-1]], 1) if self.r.bidirectional else h[-1]


def _module(layer: dict, shape: tuple[int, ...], rng: np.random.Generator) -> nn.Module:
    op = layer["op"]
    if op == "rnn":
        return Recurrent(layer, shape[-1], rng)
    if op in ("conv", "dw"):
        cin = shape[0]
        cout, groups = (layer["out"], layer.get("groups", 1)) if op == "conv" else (cin * layer["mult"], cin)
        m = nn.Conv2d(cin, cout, tuple(layer["k"]), tuple(layer["stride"]), tuple(layer["pad"]),
                      tuple(layer.get("dil", [1, 1])), groups=groups, bias=layer["bias"])
        _set_weights(m, layer, rng)
        return m
    if op == "linear":
        m = nn.Linear(shape[0], layer["out"], bias=layer["bias"])
        _set_weights(m, layer, rng)
        return m
    if op == "convt":
        m = nn.ConvTranspose2d(shape[0], layer["out"], tuple(layer["k"]), tuple(layer["stride"]),
                               tuple(layer["pad"]), tuple(layer["opad"]), bias=layer["bias"],
                               groups=layer.get("groups", 1), dilation=tuple(layer.get("dil", [1, 1])))
        _set_weights(m, layer, rng)
        return m
    if op == "up":
        mode = layer["mode"].replace("_ac", "")
        align = {"align_corners": layer["mode"].endswith("_ac")} if mode == "bilinear" else {}
        if "size" in layer:
            return nn.Upsample(size=tuple(layer["size"]), mode=mode, **align)
        return nn.Upsample(scale_factor=layer["scale"], mode=mode, **align)
    if op == "bn":
        m = nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
        _set_bn(m, layer["kind"], rng)
        return m
    if op == "ln":
        m = nn.LayerNorm(list(shape))
        _set_norm(m, layer["kind"], rng)
        return m
    if op == "gn":
        m = nn.GroupNorm(layer["groups"], shape[0])
        _set_norm(m, layer["kind"], rng)
        return m
    if op == "relu":
        return nn.ReLU()
    if op == "relu6":
        return nn.ReLU6()
    if op == "hardtanh":
        return nn.Hardtanh(layer["lo"], layer["hi"])
    if op == "clamp":
        return Clamp(layer["lo"], layer["hi"])
    if op == "maxpool":
        return nn.MaxPool2d(tuple(layer["k"]), tuple(layer["stride"]), tuple(layer["pad"]),
                            ceil_mode=layer.get("ceil", False))
    if op == "avgpool":
        return nn.AvgPool2d(tuple(layer["k"]), tuple(layer["stride"]), tuple(layer["pad"]),
                            count_include_pad=layer["include_pad"], ceil_mode=layer.get("ceil", False))
    if op == "adaptive":
        kind = nn.AdaptiveMaxPool2d if layer.get("kind") == "max" else nn.AdaptiveAvgPool2d
        return kind(tuple(layer["out"]))
    if op == "creduce":
        return ChannelReduce(layer["kind"])
    if op == "gap":
        if layer["how"] in ("adaptive", "max_adaptive"):
            kind = nn.AdaptiveMaxPool2d if layer["how"] == "max_adaptive" else nn.AdaptiveAvgPool2d
            return nn.Sequential(kind(1), nn.Flatten())
        if layer["how"] == "amax":
            return GlobalMean(False, amax=True)
        return GlobalMean(layer["how"] == "mean_keepdim")
    if op == "flatten":
        return nn.Flatten()
    if op in ("res", "cat"):
        body, inner = [], shape
        for sub in layer["body"]:
            body.append(_module(sub, inner, rng))
            inner = layer_shape(sub, inner)
        return Residual(nn.Sequential(*body), layer["relu"]) if op == "res" else Cat(nn.Sequential(*body))
    if op == "pad":
        return Pad(layer["pad"])
    if op == "softmax":
        return Softmax(layer.get("log", False))
    if op == "shuffle":
        return ChannelShuffle(layer["groups"])
    if op == "split":
        return SplitSwap(layer["at"])
    if op == "crop":
        return Crop(layer["dim"], layer["start"], layer["length"])
    if op == "lut":
        return LUT_MODULES[layer["fn"]]()
    if op == "bin":
        body, inner = [], shape
        for sub_layer in layer["body"]:
            body.append(_module(sub_layer, inner, rng))
            inner = layer_shape(sub_layer, inner)
        return Binary(nn.Sequential(*body), layer["fn"], layer["relu"], layer.get("bcast"), layer.get("first", False))
    if op == "scalar":
        return Scalar(layer["fn"], layer["c"])
    if op == "const":
        return ConstOperand(shape, layer, rng)
    if op == "se":
        m = SqueezeExcite(shape[0], layer["hidden"], layer["gate"], layer["bias"])
        _set_weights(m.fc1, layer, rng)
        _set_weights(m.fc2, layer, rng)
        return m
    if op == "prelu":
        m = nn.PReLU(shape[0] if layer["per_channel"] else 1)
        lo, hi = {"normal": (-0.5, 0.5), "negative": (-3.0, -0.1), "big": (-50.0, 50.0)}[layer["kind"]]
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(rng.uniform(lo, hi, m.weight.shape)))
        return m
    raise ValueError(f"unknown layer op {op!r}")


def _set_weights(m: nn.Module, layer: dict, rng: np.random.Generator) -> None:
    w = m.weight.detach().numpy()
    cout = w.shape[0]
    fan_in = max(1, w[0].size)
    kind = layer["w"]
    if kind == "normal":
        v = rng.standard_normal(w.shape) / math.sqrt(fan_in)
    elif kind == "extreme":  # +-127/64 everywhere: every channel's maximum is exactly the int8 maximum
        v = np.where(rng.random(w.shape) < 0.5, -1.0, 1.0) * 127 / 64
    elif kind == "zero":
        v = np.zeros(w.shape)
    elif kind == "onehot":
        v = rng.standard_normal(w.shape) * 1e-3
        v.reshape(cout, -1)[:, rng.integers(0, fan_in)] = 50.0
    else:  # channels at wildly different scales
        v = rng.standard_normal(w.shape) * 10.0 ** rng.integers(-4, 5, size=(cout,) + (1,) * (w.ndim - 1))
    v = v * 10.0 ** layer["wexp"]
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(v))
        if m.bias is not None:
            nb = m.bias.shape[0]  # ConvTranspose weights are (Cin, Cout, ...): not w.shape[0]
            b = {"zero": np.zeros(nb), "normal": rng.standard_normal(nb) * 0.5,
                 "huge": rng.standard_normal(nb) * 1e4, "tiny": rng.standard_normal(nb) * 1e-6}[layer["b"]]
            m.bias.copy_(torch.from_numpy(b * 10.0 ** layer["bexp"]))


def _set_bn(m: nn.Module, kind: str, rng: np.random.Generator) -> None:
    c = m.num_features
    with torch.no_grad():
        m.running_mean.copy_(torch.from_numpy(rng.standard_normal(c)))
        if kind == "normal":
            m.running_var.copy_(torch.from_numpy(rng.random(c) * 1.5 + 0.5))
            m.weight.copy_(torch.from_numpy(rng.random(c) + 0.5))
        else:  # tiny variances (scale ~300), zero and negative gammas
            m.running_var.copy_(torch.from_numpy(rng.random(c) * 1e-5))
            m.weight.copy_(torch.from_numpy(rng.choice([0.0, -1.0, 1.0, 3.0], size=c)))
        m.bias.copy_(torch.from_numpy(rng.standard_normal(c)))


def _set_norm(m: nn.Module, kind: str, rng: np.random.Generator) -> None:
    """LayerNorm / GroupNorm affine parameters: normal, or extreme (zero, tiny and large gammas, large betas)."""
    shape = tuple(m.weight.shape)
    with torch.no_grad():
        if kind == "normal":
            m.weight.copy_(torch.from_numpy(rng.random(shape) + 0.5))
            m.bias.copy_(torch.from_numpy(rng.standard_normal(shape) * 0.5))
        else:
            m.weight.copy_(torch.from_numpy(rng.choice([0.0, 1e-3, -1.0, 50.0], size=shape)))
            m.bias.copy_(torch.from_numpy(rng.standard_normal(shape) * 10.0))


def build_model(spec: dict) -> nn.Module:
    torch.manual_seed(spec["seed"])
    return SpecNet(spec).eval()


def calib_data(spec: dict) -> np.ndarray:
    cal = spec["calib"]
    rng = np.random.default_rng(cal["seed"])
    shape = (cal["n"], *spec["input"])
    x = {"normal": lambda: rng.standard_normal(shape), "uniform": lambda: rng.random(shape),
         "const": lambda: np.full(shape, rng.standard_normal()), "zeros": lambda: np.zeros(shape)}[cal["kind"]]()
    return (x * 10.0 ** cal["exp"]).astype(np.float32)


def int8_inputs(spec: dict, shape: tuple[int, ...], x_calib_q: np.ndarray, n_random: int = 8) -> np.ndarray:
    """All minimum, all maximum, alternating extremes (both phases), zeros, random values, the quantised
    calibration: in the model's input type (int8, or int16 for a mixed-precision model's int16 input)."""
    dtype = np.int16 if x_calib_q.dtype == np.int16 else np.int8
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    size = math.prod(shape)
    rng = np.random.default_rng(spec["seed"] + 1)
    alt = np.where(np.arange(size) % 2, hi, lo)
    fixed = [np.full(size, lo), np.full(size, hi), alt, -1 - alt, np.zeros(size)]
    rand = [rng.integers(lo, hi + 1, size) for _ in range(n_random)]
    x = np.stack(fixed + rand).astype(dtype).reshape((-1, *shape))
    return np.concatenate([x, x_calib_q.astype(dtype)])


# ------------------------------------------------------------------------------------ the check


@dataclass
class Stats:
    graphs: int = 0  # compiled, built with sanitizers and compared
    refused: int = 0  # refused with an expected UserError
    inputs: int = 0  # int8 input vectors run through the sanitised C and the reference
    layers: int = 0  # IR nodes in compiled graphs
    ops: dict = field(default_factory=dict)  # IR op -> count
    refusals: dict = field(default_factory=dict)  # expected refusal -> count
    known_bugs: dict = field(default_factory=dict)  # KNOWN_BUGS key -> count
    mixed: int = 0  # graphs also compiled and compared with a random subset of layers at int16

    def to_dict(self) -> dict:
        return {"graphs": self.graphs, "refused": self.refused, "inputs": self.inputs, "layers": self.layers,
                "ops": dict(sorted(self.ops.items())), "refusals": self.refusals, "known_bugs": self.known_bugs,
                "mixed_precision_graphs": self.mixed}


STATS = Stats()


def check_spec(spec: dict, workdir: Path | None = None, stats: Stats = STATS) -> str:
    """Compile `spec`; C (ASan+UBSan) must equal the reference on every input. 'ok' or 'refused: ...'."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="qgen-fuzz-") as tmp:
            return check_spec(spec, Path(tmp), stats)
    model = build_model(spec)
    calib = calib_data(spec)
    example = torch.from_numpy(calib[:1])
    where = f"spec = {json.dumps(spec)}"
    try:
        result = qcompile(model, example, calib, prefix=PREFIX, out_dir=workdir / "model", command="qgen fuzz")
    except UserError as exc:
        message = str(exc)
        assert any(m in message for m in EXPECTED_REFUSALS), f"unexpected refusal: {message}\n{where}"
        key = next(m for m in EXPECTED_REFUSALS if m in message)
        stats.refused += 1
        stats.refusals[key] = stats.refusals.get(key, 0) + 1
        return f"refused: {message}"
    except Exception as exc:  # an internal error: a bug, unless it is a known open one
        known = [k for k, pattern in KNOWN_BUGS.items() if pattern.search(str(exc))]
        if not known:
            raise AssertionError(f"internal error {type(exc).__name__}: {exc}\n{where}") from exc
        stats.known_bugs[known[0]] = stats.known_bugs.get(known[0], 0) + 1
        return f"known bug: {known[0]}"
    if spec["seed"] % 4 == 0:  # determinism on a quarter of the graphs (a second export costs time)
        again = qcompile(build_model(spec), example, calib, prefix=PREFIX, command="qgen fuzz")
        for name, content in result.files.items():
            assert again.files[name] == content, f"compiling twice gave different {name}\n{where}"
    n_inputs = _compare_sanitized(spec, result, calib, workdir / "model", where)
    if spec.get("wide") is not None:
        stats.mixed += _check_mixed_precision(spec, result, example, calib, workdir, where)
    g = result.graph
    stats.graphs += 1
    stats.inputs += n_inputs
    stats.layers += len(g.nodes)
    for node in g.nodes:
        stats.ops[node.op.value] = stats.ops.get(node.op.value, 0) + 1
    return "ok"


def _compare_sanitized(spec: dict, result, calib: np.ndarray, model_dir: Path, where: str) -> int:
    """Sanitised C == reference on extreme, random and calibration inputs; returns how many inputs."""
    g = result.graph
    shape = g.tensors[g.inputs[0]].shape
    x = int8_inputs(spec, shape, np.concatenate([result.quantize_input(calib), result.quantize_input(calib * 8)]))
    expect = result.reference(x)
    exe = build_sanitized(model_dir, model_dir.parent / f"{model_dir.name}_asan")
    try:
        got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    except RuntimeError as exc:  # a sanitizer report (or a failing status) ends the program
        raise AssertionError(f"sanitised C failed: {exc}\n{where}\n{g}") from None
    if not np.array_equal(got, expect):
        check = host_verify(g, result.host(), x)  # cffi build with the trace hook: first differing layer
        raise AssertionError(f"C != reference: {check}\n{where}\n{g}")
    return len(x)


def _check_mixed_precision(spec: dict, result, example, calib: np.ndarray, workdir: Path, where: str) -> int:
    """The same model with a seeded random subset of the eligible layers at int16 (int16 kernels)."""
    from codegen.passes.assign_precision import candidates

    rng = np.random.default_rng(spec["wide"])
    names = sorted(set(candidates(result.float_graph)))
    chosen = {name: 16 for name in names if rng.random() < 0.75}
    if not chosen:
        return 0
    try:
        wide = qcompile(build_model(spec), example, calib, prefix=PREFIX, out_dir=workdir / "wide",
                        command="qgen fuzz", precision=chosen)
    except UserError as exc:
        assert any(m in str(exc) for m in EXPECTED_REFUSALS), f"unexpected refusal: {exc}\n{where}, {chosen}"
        return 0
    assert any(t.dtype == "int16" for t in wide.graph.tensors.values()), f"no int16 tensor\n{where}"
    _compare_sanitized(spec, wide, calib, workdir / "wide", f"{where}, precision {chosen}")
    return 1


def build_sanitized(model_dir: Path, exe: Path) -> Path:
    """build_native(..., SANITIZE_FLAGS): the sanitised kernel library is one archive cached by the kernel
    sources' hash (codegen/kernel_lib.py); each model compiles only its model/weights files and the harness."""
    return build_native(model_dir, PREFIX, exe, SANITIZE_FLAGS)


def dump_stats(stats: Stats = STATS) -> None:
    path = os.environ.get("QGEN_FUZZ_STATS")
    if path:
        Path(path).write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
