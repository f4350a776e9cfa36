"""Compression that pays off in the generated code: options, the pass list, fine-tuning, reports.

    opts = compress.parse_cli(prune=0.8, channels=0.5, rank="energy:0.95", cluster=4)
    result = codegen.compile(model, example, calib, extra_passes=compress.passes(opts, train=(x, y)))
    compress.summary(result.graph)   # per layer: chosen weight format, bytes, MACs executed

Every technique is a float-IR pass (codegen/passes/): prune_channels and low_rank change the graph's
shapes; prune_magnitude zeroes weights and cluster shares them, and both mark the layers so that the
C emitter stores them compressed (codegen/emit/weight_formats.py) and runs kernels that skip zeros or
decode indices. Order: channels -> low rank -> fine-tune -> magnitude pruning -> fine-tune (masked)
-> clustering. Fine-tuning (optional, needs labelled training data) trains the float IR itself with
PyTorch (`GraphModule`: codegen/torch_ir.py, the torch interpreter of the IR that QAT uses too), so it
works the same after any structural change and on every model QAT runs (1-D included); pruned weights stay zero.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial

import numpy as np

from . import progress
from .errors import UserError
from .ir import Graph, Op
from .ops import Trait, has
from .options import CompressOptions
from .passes import cluster, low_rank, prune_channels, prune_magnitude

Pass = tuple[str, Callable[[Graph], Graph]]


def parse_rank(text: str | int | None) -> tuple[float | None, int | None]:
    """'energy:0.95' -> (0.95, None); '8' or 8 -> (None, 8)."""
    if text is None:
        return None, None
    if isinstance(text, (int, np.integer)):
        return None, int(text)
    s = str(text).strip()
    try:
        if s.startswith("energy:"):
            return float(s[len("energy:"):]), None
        return None, int(s)
    except ValueError:
        raise UserError(f"--rank '{text}' is not understood; use an explicit rank (e.g. 8) or an energy "
                        "threshold (e.g. energy:0.95)") from None


def parse_cli(prune: float | None = None, channels: float | None = None, rank: str | int | None = None,
              cluster: int | None = None, *, prune_scope: str = "layer", importance: str = "magnitude",
              channel_criterion: str = "l1", finetune_epochs: int = 0, prune_steps: int = 1,
              lr: float = 3e-3, prune_layers: list[str] | None = None) -> CompressOptions:
    """The options of `qgen compile/compress --prune --channels --rank --cluster`, validated (UserError)."""
    energy, explicit = parse_rank(rank)
    opts = CompressOptions(prune=prune, prune_scope=prune_scope, importance=importance, channels=channels,
                           channel_criterion=channel_criterion, rank_energy=energy, rank=explicit,
                           cluster=cluster, finetune_epochs=finetune_epochs, prune_steps=prune_steps, lr=lr,
                           prune_layers=tuple(prune_layers) if prune_layers is not None else None)
    validate(opts)
    return opts


def validate(opts: CompressOptions) -> None:
    if opts.prune is not None:
        prune_magnitude.check_sparsity(opts.prune)
    if opts.prune_scope not in ("layer", "global"):
        raise UserError(f"pruning scope '{opts.prune_scope}' is unknown; use 'layer' or 'global'")
    if opts.importance not in ("magnitude", "gradient"):
        raise UserError(f"importance '{opts.importance}' is unknown; use 'magnitude' or 'gradient'")
    if opts.channels is not None and not (isinstance(opts.channels, (int, float)) and 0 <= opts.channels < 1):
        raise UserError(f"channel pruning ratio {opts.channels!r} is impossible: 0 <= ratio < 1 (e.g. 0.5)")
    if opts.channel_criterion not in ("l1", "l2", "bn"):
        raise UserError(f"channel criterion '{opts.channel_criterion}' is unknown; use l1, l2 or bn")
    if opts.rank_energy is not None or opts.rank is not None:
        low_rank.check(opts.rank_energy, opts.rank)
    if opts.cluster is not None:
        cluster.check_bits(opts.cluster)
    if not isinstance(opts.prune_steps, int) or opts.prune_steps < 1:
        raise UserError(f"gradual pruning steps (--prune-steps / prune_steps) must be an integer >= 1, got "
                        f"{opts.prune_steps!r}")
    if opts.finetune_epochs < 0:
        raise UserError(f"fine-tuning epochs must be >= 0, got {opts.finetune_epochs}")


def passes(opts: CompressOptions, train: tuple[np.ndarray, np.ndarray] | None = None, model=None,
           example=None) -> list[Pass]:
    """The float-IR passes for `codegen.compile(..., extra_passes=...)`.

    train: (x, y) float samples in PyTorch layout and integer class labels, for fine-tuning and for
        gradient importance. model/example: the torch module, for the 'bn' channel criterion.
    """
    validate(opts)
    if opts.importance == "gradient" and opts.prune is not None and train is None:
        raise UserError("gradient importance (|w * dL/dw|) needs training data: pass train=(x, y)")
    result: list[Pass] = []
    tune = opts.finetune_epochs > 0 and train is not None
    if opts.channels is not None:
        scores = None
        criterion = opts.channel_criterion
        if criterion == "bn":
            if model is None or example is None:
                raise UserError("the 'bn' channel criterion needs the torch model and an example input")
            scores, criterion = bn_importance(model, example), "scores"
        result.append(("prune_channels", partial(prune_channels.run, ratio=opts.channels, criterion=criterion,
                                                 scores=scores)))
    if opts.rank_energy is not None or opts.rank is not None:
        result.append(("low_rank", partial(low_rank.run, energy=opts.rank_energy, rank=opts.rank)))
    if tune and (opts.channels is not None or opts.rank_energy is not None or opts.rank is not None):
        result.append(("finetune", partial(finetune, train=train, opts=opts)))
    if opts.prune is not None:
        steps = opts.prune_steps if tune else 1
        for step in range(1, steps + 1):
            sparsity = opts.prune * step / steps
            suffix = f"_{step}" if steps > 1 else ""
            result.append((f"prune_magnitude{suffix}", partial(_prune, sparsity=sparsity, opts=opts, train=train,
                                                                final=step == steps)))
            if tune:
                result.append((f"finetune_sparse{suffix}", partial(finetune, train=train, opts=opts)))
    if opts.cluster is not None:
        result.append(("cluster", partial(cluster.run, bits=opts.cluster)))
    return result


def _prune(graph: Graph, sparsity: float, opts: CompressOptions, train, final: bool = True) -> Graph:
    imp = gradient_importance(graph, *train, batch=opts.batch) if opts.importance == "gradient" else None
    layers = list(opts.prune_layers) if opts.prune_layers is not None else None
    if layers is None and not final and not any(prune_magnitude.pays_off(graph, n, sparsity)
                                                for n in graph.nodes if n.op in prune_magnitude.PRUNABLE):
        # an early gradual step whose sparsity alone shrinks no layer: prune the layers the final sparsity prunes
        layers = [n.name for n in prune_magnitude.prunable_nodes(graph, None, opts.prune)]
    return prune_magnitude.run(graph, sparsity, opts.prune_scope, imp, layers)


# ------------------------------------------------------------------ the float IR as a torch module


def __getattr__(name: str):
    """`compress.GraphModule`: the float IR as a torch function, codegen/torch_ir.py's FloatModule (the one
    torch interpreter of the IR, shared with QAT); imported on use, as torch is."""
    if name == "GraphModule":
        from .torch_ir import FloatModule

        return FloatModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch_batch(x: np.ndarray, graph: Graph):
    """Training samples in PyTorch layout -> a float32 batch in the IR's layout (1-D models included)."""
    import torch

    from .torch_ir import to_ir_layout

    return to_ir_layout(torch.tensor(np.asarray(x), dtype=torch.float32), graph.io_layout.get(graph.inputs[0]))


def gradient_importance(graph: Graph, x: np.ndarray, y: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """|w * dL/dw| accumulated over the training data (first-order Taylor estimate of the loss change
    when the weight is removed), per conv2d / linear node name."""
    import torch

    from .torch_ir import FloatModule

    module = FloatModule(graph)
    xt, yt = _torch_batch(x, graph), torch.as_tensor(np.asarray(y))
    for start in range(0, len(xt), batch):
        loss = torch.nn.functional.cross_entropy(module(xt[start:start + batch]), yt[start:start + batch],
                                                 reduction="sum")
        loss.backward()
    out = {}
    for n in graph.nodes:
        if n.op in prune_magnitude.PRUNABLE:
            p = module.params[n.inputs[1]]
            out[n.name] = (p.detach() * p.grad).abs().double().numpy()
    return out


_EPOCH_HOOK: ContextVar[Callable | None] = ContextVar("qgen_finetune_epoch_hook", default=None)


@contextmanager
def epoch_hook(fn: Callable):
    """Call fn(module, graph) after every fine-tuning epoch inside this block (codegen.tuning reports the accuracy
    to an Optuna pruner; an exception from fn stops the compile). It must not change the module or draw from
    torch's random generator: the result stays that of the same compile without the hook."""
    token = _EPOCH_HOOK.set(fn)
    try:
        yield
    finally:
        _EPOCH_HOOK.reset(token)


def finetune(graph: Graph, train: tuple[np.ndarray, np.ndarray], opts: CompressOptions) -> Graph:
    """A few epochs of Adam on the float IR (cross-entropy on class labels). Weights that are exactly
    zero (pruned) stay zero. Run it before clustering (as `passes` does): training would undo sharing."""
    import torch

    if opts.finetune_epochs <= 0:
        return graph
    from .torch_ir import FloatModule

    torch.manual_seed(opts.seed)
    module = FloatModule(graph)
    masks = {}
    for n in graph.nodes:
        if has(n.op, Trait.WEIGHTED) and n.attrs.get("weight_format", "dense") != "dense":
            masks[n.inputs[1]] = (module.params[n.inputs[1]] != 0).float()
    params = list(module.params.values())
    opt = torch.optim.Adam(params, lr=opts.lr)
    x, y = train
    xt, yt = _torch_batch(x, graph), torch.as_tensor(np.asarray(y))
    gen = torch.Generator().manual_seed(opts.seed)
    epochs, batches = opts.finetune_epochs, -(-len(xt) // opts.batch)
    with progress.task("fine-tune", total=epochs * batches) as bar:  # one step per batch, a line per epoch
        for epoch in range(epochs):
            loss_sum = 0.0
            for idx in torch.randperm(len(xt), generator=gen).split(opts.batch):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(module(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for name, m in masks.items():
                        module.params[name].mul_(m)
                loss_sum += float(loss.detach()) * len(idx)
                bar.advance()
            bar.note(f"epoch {epoch + 1}/{epochs} loss {loss_sum / max(1, len(xt)):.4f}")
            hook = _EPOCH_HOOK.get()
            if hook is not None:
                with torch.no_grad():
                    hook(module, graph)
    module.write_back()
    return graph


def bn_importance(model, example) -> dict[str, np.ndarray]:
    """BatchNorm |gamma| of each conv2d / linear that a BatchNorm follows (network slimming's channel
    importance), keyed by the producer's IR node name; read from the module before BN is folded."""
    from .frontend import from_module

    g = from_module(model, example)
    scores = {}
    for bn in (n for n in g.nodes if n.op is Op.BATCH_NORM):
        producer = g.producer(bn.inputs[0])
        if producer is None or not has(producer.op, Trait.MATMUL):
            continue
        try:
            gamma = model.get_submodule(bn.name).weight
        except AttributeError:
            gamma = None
        if gamma is None:  # affine=False or an unnamed node: the folded scale gamma / sqrt(var + eps)
            scores[producer.name] = np.abs(g.tensors[bn.inputs[1]].data)
        else:
            scores[producer.name] = np.abs(gamma.detach().double().numpy())
    if not scores:
        raise UserError("the 'bn' channel criterion found no BatchNorm after a conv2d/linear; use l1 or l2")
    return scores


# ------------------------------------------------------------------ what it bought


def summary(graph: Graph) -> list[dict]:
    """Per weighted layer of a quantised graph: format, bytes (dense and as emitted), MACs (dense and executed)."""
    from .weight_storage import summary as layer_summary

    return layer_summary(graph)


def totals(graph: Graph) -> dict:
    layers = summary(graph)
    keys = ("weights", "nonzero", "dense_bytes", "bytes", "dense_layer_bytes", "layer_bytes", "macs", "macs_executed")
    return {k: int(sum(layer[k] for layer in layers)) for k in keys}


def summary_lines(graph: Graph) -> list[str]:
    """A small table for the CLI: one line per weighted layer plus a total."""
    lines = [f"{'layer':<24} {'format':<9} {'nonzero':>15} {'bytes':>17} {'MACs executed':>21}"]
    for s in summary(graph):
        fmt = s["format"] + (f"/{s['bits']}b" if s["format"] == "cluster" else "")
        lines.append(f"{s['name'][:24]:<24} {fmt:<9} {s['nonzero']:>7}/{s['weights']:<7} "
                     f"{s['bytes']:>7} of {s['dense_bytes']:<7} {s['macs_executed']:>9} of {s['macs']:<9}")
    t = totals(graph)
    lines.append(f"{'total':<24} {'':<9} {t['nonzero']:>7}/{t['weights']:<7} {t['bytes']:>7} of {t['dense_bytes']:<7} "
                 f"{t['macs_executed']:>9} of {t['macs']:<9}")
    return lines


__all__ = ["CompressOptions", "GraphModule",  # noqa: F822 (GraphModule: the module's __getattr__)
           "bn_importance", "finetune", "gradient_importance", "parse_cli", "parse_rank", "passes", "summary",
           "summary_lines", "totals", "validate"]
