"""qgen command line: thin wrappers over the Python API (codegen.api).

Exit codes: 0 ok, 1 user error (message only), 2 internal error (traceback; please report).
"""
from __future__ import annotations

import argparse
import re
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import numpy as np


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,1,8,8") from None
    if not shape:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,1,8,8")
    if any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"'{text}': dimensions must be positive (a fixed shape, batch first, "
                                         "e.g. 1,1,8,8; qgen compiles one fixed shape, no -1)")
    return shape


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--input-shape -1,1,8,8` -> `--input-shape=-1,1,8,8`: argparse takes a value starting with '-' for an
    option (and says 'expected one argument'); joined, _shape explains what is wrong with it."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--input-shape" and re.fullmatch(r"-[\d,x\s-]+", arg):
            out[-1] = f"--input-shape={arg}"
        else:
            out.append(arg)
    return out


def _bytes(text: str) -> int:
    """A byte count: 4194304, 4096K or 4M (K = 1024)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a byte count like 2097152, 2048K or 2M")
    return value


def _split_limits(args) -> tuple[int | None, int | None]:
    """--max-flash/--max-ram, or for a model split over several boards, their combined memories."""
    parts = len(args.split_at) + 1 if getattr(args, "split_at", None) else 1
    if getattr(args, "boards", None):
        from .target import load_board

        boards = [load_board(b) for b in args.boards]
        flash, ram = sum(b.flash_kb for b in boards) * 1024, sum(b.ram_kb for b in boards) * 1024
    elif parts > 1:
        from .limits import largest_board

        (flash, _), (ram, _) = largest_board()
        flash, ram = parts * flash, parts * ram
    else:
        return args.max_flash, args.max_ram
    return args.max_flash or flash, args.max_ram or ram


def _load_array(path: str, what: str) -> np.ndarray:
    import numpy as np  # imported here, not at start-up, so that Ctrl-C during imports is caught by main

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} '{path}' is a directory; give a .npy file (numpy.save('data.npy', x))")
    if not p.is_file():
        raise UserError(f"{what} file '{path}' does not exist")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read {what} '{path}' as a .npy array ({type(exc).__name__}); "
                        "save it with numpy.save('data.npy', x)") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{what} '{path}' is an .npz archive; give one .npy array")
    if data.dtype.kind not in "fiu":
        raise UserError(f"{what} '{path}' has dtype {data.dtype}; give float samples")
    return data


# `qgen compile` flag (argparse dest) -> CompileOptions field; FLAG_INPUTS are data, paths and actions, not
# options; API_ONLY_FIELDS have no flag. tests/test_options.py checks that these cover both sides exactly.
FLAG_FIELDS = {
    "prefix": "emit.prefix", "arena_argument": "emit.arena_argument", "stream": "emit.stream",
    "calibration": "quant.calibration", "percentile": "quant.percentile",
    "bias_correction": "quant.bias_correction", "equalize": "quant.equalize", "precision": "quant.precision",
    "weights": "quant.weights", "recurrent_state": "quant.recurrent_state",
    "auto_precision": "quant.auto_precision", "max_acc_drop": "quant.auto_precision",
    "max_flash": "limits.max_flash", "max_ram": "limits.max_ram",
    "prune": "compress.prune", "prune_scope": "compress.prune_scope", "importance": "compress.importance",
    "channels": "compress.channels", "rank": ("compress.rank", "compress.rank_energy"),
    "cluster": "compress.cluster", "finetune_epochs": "compress.finetune_epochs",
    "prune_steps": "compress.prune_steps",
}
FLAG_INPUTS = {"model", "input_shape", "calib", "out", "verify", "split_at", "boards", "eval", "eval_labels",
               "train", "labels", "cmake", "arduino", "quiet"}
API_ONLY_FIELDS = {"limits.board", "compress.prune_layers", "compress.channel_criterion",
                   "compress.lr", "compress.batch", "compress.seed"}


def compile_options(args):
    """The CompileOptions of `qgen compile`'s flags (validated: UserError)."""
    from . import compress
    from .options import CompileOptions, EmitOptions, LimitOptions, QuantOptions
    from .passes.assign_precision import parse_spec

    compressed = compress.parse_cli(prune=args.prune, channels=args.channels, rank=args.rank, cluster=args.cluster,
                                    prune_scope=args.prune_scope, importance=args.importance,
                                    finetune_epochs=args.finetune_epochs, prune_steps=args.prune_steps)
    if args.prune_steps != 1 and args.prune is None:
        raise UserError(f"--prune-steps {args.prune_steps} is gradual unstructured pruning; give --prune (e.g. "
                        f"--prune 0.8 --prune-steps {args.prune_steps} --finetune-epochs 5)")
    if args.prune_steps != 1 and not args.finetune_epochs:
        raise UserError(f"--prune-steps {args.prune_steps} prunes in {args.prune_steps} rounds of prune + "
                        "fine-tune; give --finetune-epochs N (and --train/--labels), or drop --prune-steps")
    max_flash, max_ram = _split_limits(args)
    return CompileOptions(
        quant=QuantOptions(calibration=args.calibration, percentile=args.percentile,
                           bias_correction=args.bias_correction, equalize=args.equalize,
                           precision=dict(parse_spec(args.precision) or {}), weights=args.weights,
                           recurrent_state=int(args.recurrent_state.removeprefix("int")),
                           auto_precision=args.max_acc_drop if args.auto_precision else None),
        compress=compressed, emit=EmitOptions(prefix=args.prefix, arena_argument=args.arena_argument,
                                                   stream=args.stream),
        limits=LimitOptions(max_flash=max_flash, max_ram=max_ram))


def _train_data(args, options):
    """(x, y) for compression fine-tuning / gradient importance, from --train/--labels."""
    if not options.compress.any:
        return None
    if args.train:
        if not args.labels:
            raise UserError("--train needs --labels (integer class labels, .npy) for fine-tuning")
        return _load_array(args.train, "training data"), _load_array(args.labels, "labels").astype("int64")
    if args.finetune_epochs or args.importance == "gradient":
        raise UserError("fine-tuning and gradient importance need --train x.npy --labels y.npy")
    return None


def cmd_compile(args) -> int:
    from . import compile as qcompile
    from . import report

    calib = _load_array(args.calib, "calibration data") if args.calib else None
    if calib is None:
        print("warning: no --calib given; calibrating on random N(0,1) inputs. Pass real samples for "
              "accuracy.", file=sys.stderr)
    options = compile_options(args)
    train = _train_data(args, options)
    split_at = getattr(args, "split_at", None)
    eval_x = _load_array(args.eval, "evaluation data") if args.eval else None
    eval_labels = _load_array(args.eval_labels, "evaluation labels") if args.eval_labels else None
    if args.auto_precision and eval_x is None and calib is None:
        raise UserError("--auto-precision measures accuracy on data: give --calib (and --eval-labels) or --eval")
    if args.cmake and split_at:
        raise UserError("--cmake packages one model; with --split-at, package each part: qgen compile its part "
                        "model, or add_subdirectory the parts' folders yourself")
    result = qcompile(args.model, args.input_shape, calib, options=options,
                      out_dir=None if split_at or args.cmake else args.out,
                      eval_data=eval_x, labels=eval_labels, train=train)
    if args.cmake:  # the model and its CMake package in one atomic write
        from .cmake import write_with_cmake

        write_with_cmake(result, args.out)
    if args.arduino:
        if split_at:
            raise UserError("--arduino packages one model; with --split-at, compile each part model on its own")
        from .arduino import write_arduino_library

        write_arduino_library(result, args.arduino)
    report.print_table(result.report)
    if options.emit.stream:
        from .passes.stream import summary_line

        print(summary_line(result.report["stream"], args.prefix))
    if options.compress.any or args.command == "compress":
        from . import compress

        print("\n".join(compress.summary_lines(result.graph)))
    if getattr(args, "boards", None):
        from . import split

        print(split.suggestions_markdown(split.suggest_splits(result.graph, args.boards)))
    if split_at:
        from . import split

        parts = split.split_model(result, split_at, out_dir=args.out)
        print(parts.files[f"{args.prefix}_split.md"])
        print(f"wrote {args.out}/part0 .. part{len(split_at)} and {args.prefix}_split.h/.c")
        return 0
    if args.verify:
        check = result.verify()
        print(check)
        if not check.exact:
            return 2
    print(f"wrote {args.out}/ ({args.prefix}_model.h, {args.prefix}_model.c, {args.prefix}_weights.c, kernels/"
          + (f", CMakeLists.txt: add_subdirectory it, link target {args.prefix})" if args.cmake else ")"))
    if args.arduino:
        print(f"wrote {args.arduino}/ (Arduino library: copy it into your sketchbook's libraries/, example "
              f"examples/{args.prefix}/{args.prefix}.ino)")
    return 0


def cmd_verify(args) -> int:
    from .api import load_compiled

    result = load_compiled(args.dir)
    x = _load_array(args.data, "verification data") if args.data else None
    check = result.verify(x)
    print(check)
    return 0 if check.exact else 3


def cmd_report(args) -> int:
    import json

    from . import report

    path = Path(args.dir) / "report.json"
    if not path.is_file():
        raise UserError(f"'{args.dir}' has no report.json; run qgen compile first")
    if args.html or args.png or args.board or args.qemu:
        return _visual_report(args)
    report.print_table(json.loads(path.read_text()))
    return 0


def _visual_report(args) -> int:
    from .api import load_compiled
    from .report_html import write_report

    if not (args.html or args.png):
        raise UserError("--board and --qemu add to a visual report: add --html (and/or --png)")
    if args.qemu and not args.board:
        raise UserError("--qemu counts instructions per layer on a board: add --board NAME (e.g. stm32f446)")
    result, run = load_compiled(args.dir), None
    if args.qemu:
        from . import deploy

        run = deploy.run(args.dir, args.board, n=1, per_layer=True)
    for path, size in write_report(result, html=args.html, png=args.png, board=args.board, run=run).items():
        print(f"wrote {path} ({size / 1024:.0f} KB)")
    return 0


def _model_dir(args, tmp: Path) -> Path:
    """A qgen output directory, or compile the model target first (same options as `qgen compile`)."""
    target = Path(args.model)
    if target.is_dir():
        return target
    from . import compile as qcompile

    calib = _load_array(args.calib, "calibration data") if args.calib else None
    board = getattr(args, "board", None)  # refuse a model too big for the board before calibrating it
    qcompile(args.model, args.input_shape, calib, prefix=args.prefix, out_dir=tmp / "model", board=board)
    return tmp / "model"


def cmd_firmware(args) -> int:
    import tempfile

    from . import deploy

    if args.image:
        return _firmware_image(args)
    args.out = args.out or "build/firmware"
    with tempfile.TemporaryDirectory(prefix="qgen-") as tmp:
        model_dir = _model_dir(args, Path(tmp))
        fw = deploy.build(model_dir, args.board, Path(tmp) / "build", project_dir=args.out)
        s = fw.elf.sizes
    print(f"board {fw.board.name}: {fw.board.description}")
    print(f".text {s.text:,} B  .rodata {s.rodata:,} B  .data {s.data:,} B  .bss {s.bss:,} B  (harness included)")
    print(deploy.fit_line(fw.elf))
    print(f"wrote {args.out}/ (Makefile project: `make`, `make run` under QEMU)")
    return 0


def _firmware_image(args) -> int:
    import tempfile

    from . import deploy
    from .target.avr import is_avr_board
    from .target.image import build_image

    out = args.out or "build/image"
    if is_avr_board(args.board):
        return _firmware_image_avr(args, out)
    with tempfile.TemporaryDirectory(prefix="qgen-") as tmp:
        built = build_image(_model_dir(args, Path(tmp)), args.board, out)
    fw = built.firmware
    print(f"board {fw.board.name}: {fw.board.description} (its own memory map: a flashable image)")
    print(deploy.fit_line(fw.elf))
    print(f"wrote {out}/ ({', '.join(f for f in built.files if f.startswith('firmware.'))}); "
          f"flash it: qgen flash --board {fw.board.name} --dir {out}")
    return 0


def _firmware_image_avr(args, out: str) -> int:
    import tempfile

    from .target.avr import build_avr_image, load_avr_board

    board = load_avr_board(args.board)
    with tempfile.TemporaryDirectory(prefix="qgen-") as tmp:
        memory, files = build_avr_image(_model_dir(args, Path(tmp)), board, out)
    print(f"board {board.name}: {board.description} (a flashable image for its serial bootloader)")
    print(f"flash {memory.flash_bytes:,} of {board.flash_kb * 1024 - board.flash.bootloader_bytes:,} B (below the "
          f"bootloader), static RAM {memory.static_ram_bytes:,} + {board.stack_bytes} B stack of "
          f"{board.ram_kb * 1024:,} B")
    print(f"wrote {out}/ ({', '.join(f for f in files if f.startswith('firmware.'))}); "
          f"flash it: qgen flash --board {board.name} --dir {out}")
    return 0


def cmd_flash(args) -> int:
    from .target import load_board
    from .target.avr import is_avr_board, load_avr_board
    from .target.flash import avr_flash_text, flash_text, run_avr_flash, run_flash

    if is_avr_board(args.board):
        avr = load_avr_board(args.board)
        for line in avr_flash_text(avr, Path(args.dir), args.port):
            print(line)
        return run_avr_flash(avr, Path(args.dir), args.port) if args.run else 0
    if args.port:
        raise UserError("--port is for AVR boards (avrdude); Cortex-M boards are programmed through a debug probe")
    board = load_board(args.board)
    for line in flash_text(board, Path(args.dir), args.probe):
        print(line)
    return run_flash(board, Path(args.dir), args.probe) if args.run else 0


def cmd_run(args) -> int:
    import tempfile

    from . import deploy
    from .target.avr import is_avr_board

    if is_avr_board(args.board):
        return _run_avr(args)
    if not args.qemu:
        raise UserError("only --qemu runs are supported here (no board is attached); add --qemu")
    with tempfile.TemporaryDirectory(prefix="qgen-") as tmp:
        model_dir = _model_dir(args, Path(tmp))
        x = None
        if args.data:
            from .api import load_compiled

            x = load_compiled(model_dir).quantize_input(_load_array(args.data, "input data"))
        result = deploy.run(model_dir, args.board, x, args.n, per_layer=args.per_layer)
    for line in result.summary():
        print(line)
    return 0 if result.exact else 3


def _run_avr(args) -> int:
    """`qgen run --board atmega2560|atmega328p`: under simavr (the compile-time limits know Cortex-M boards only;
    the AVR fit check runs on the built firmware)."""
    import tempfile

    from .target.avr import run_compiled_avr

    board, args.board = args.board, None
    with tempfile.TemporaryDirectory(prefix="qgen-") as tmp:
        model_dir = _model_dir(args, Path(tmp))
        x = None
        if args.data:
            from .api import load_compiled

            x = load_compiled(model_dir).quantize_input(_load_array(args.data, "input data"))
        lines, exact = run_compiled_avr(model_dir, board, x, args.n, per_layer=args.per_layer)
    for line in lines:
        print(line)
    return 0 if exact else 3


def cmd_micropython(args) -> int:
    import tempfile

    from .api import load_compiled
    from .emit.micropython import render_micropython
    from .emit.mpy_native import build_natmod, micropython_source, mpy_cross_path, render_native, write_parent_cmake
    from .output import banner_lines, option_text, write_atomic

    out = Path(args.out)
    mpy_dir = micropython_source(args.micropython_src) if args.mode == "natmod" else None
    mpy_cross = mpy_cross_path(args.mpy_cross) if args.mode == "natmod" else None
    with tempfile.TemporaryDirectory(prefix="qgen-") as tmp:
        compiled = load_compiled(_model_dir(args, Path(tmp)))
        banner = banner_lines(compiled.graph.source, option_text(
            prefix=args.prefix, mode=args.mode, **({"arch": args.arch} if args.mode == "natmod" else {})))
        if args.mode == "pure":
            files = render_micropython(compiled.graph, args.prefix, banner)
        else:
            files = render_native(compiled.graph, args.prefix, banner, args.mode, args.arch)
    write_atomic(files, out)
    if args.mode == "pure":
        print(f"wrote {out}/{args.prefix}.py: `mpremote cp {out}/{args.prefix}.py :` then "
              f"`import {args.prefix}; {args.prefix}.predict(input_bytes)`")
    elif args.mode == "natmod" and mpy_dir is not None:
        mpy = build_natmod(out, mpy_dir, mpy_cross=mpy_cross)
        print(f"built {mpy} ({mpy.stat().st_size:,} bytes, {args.arch}): `mpremote cp {mpy} :` then "
              f"`import {args.prefix}; {args.prefix}.predict(input_bytes)`")
    elif args.mode == "natmod":
        print(f"wrote {out}/ (natmod project, {args.arch}); build the .mpy with the MicroPython source the "
              f"firmware was built from: make -C {out} MPY_DIR=/path/to/micropython (or rerun with "
              "--micropython-src PATH / QGEN_MICROPYTHON_SRC), then `mpremote cp` the .mpy to the board")
    else:
        parent = write_parent_cmake(out)
        cmake = parent or f"{out.resolve()}/micropython.cmake"
        print(f"wrote {out}/ (user C module): build it into the firmware with "
              f"make -C ports/<port> USER_C_MODULES={out.resolve().parent} (make ports) or "
              f"USER_C_MODULES={cmake} (CMake ports: rp2, esp32"
              + (", every module of the folder)" if parent else "; the folder's own micropython.cmake is kept)"))
    return 0


def cmd_merge(args) -> int:
    from .fuse.weight_merge import load_members, load_samples, merge, save_merged

    if not args.out.endswith((".pt2", ".pt", ".pth")):
        raise UserError(f"-o {args.out}: give merged.pt2 (a program qgen compile takes) or merged.pt (a state dict)")
    calib = load_samples(args.calib, "calibration data")[0] if args.calib else None
    eval_x, eval_y = load_samples(args.eval, "evaluation data") if args.eval else (None, None)
    if args.eval_labels:
        eval_y = _load_array(args.eval_labels, "evaluation labels")
    method = "greedy" if args.greedy else "search" if args.search else "uniform"
    if method != "uniform" and eval_y is None:
        raise UserError(f"--{method} chooses by held-out accuracy: give --eval eval.npz (arrays x, y) or --eval "
                        "x.npy --eval-labels y.npy")
    coeffs = None
    if args.coeffs:
        try:
            coeffs = [float(c) for c in args.coeffs.split(",")]
        except ValueError:
            raise UserError(f"--coeffs {args.coeffs}: give numbers separated by commas, e.g. 0.5,0.5") from None
    models, example = load_members(args.models, args.input_shape)
    if example is None and calib is not None:
        import torch

        example = torch.as_tensor(calib[:1], dtype=torch.float32)
    if args.reference != "best" and not (args.reference.isdigit() and 1 <= int(args.reference) <= len(models)):
        raise UserError(f"--reference {args.reference}: give a model position 1..{len(models)} or 'best'")
    merged, info = merge(models, coeffs, method=method, align=args.align_by or args.align,
                         repair=not args.no_repair and "auto", calib_data=calib, eval_data=eval_x, labels=eval_y,
                         example_input=example,
                         reference="best" if args.reference == "best" else int(args.reference) - 1,
                         return_info=True)
    save_merged(merged, example, args.out)
    print(info.summary())
    print(f"wrote {args.out}" + (f"; compile it: qgen compile {args.out} --calib CALIB.npy --out OUT"
                                 if args.out.endswith(".pt2") else ""))
    return 0


def cmd_bundle(args) -> int:
    from .bundle import bundle

    r = bundle(args.models, args.out, name=args.name)
    print(f"wrote {args.out}/ ({', '.join(m.prefix for m in r.models)}; shared arena {r.arena_size:,} B)")
    return 0


def cmd_fuse(args) -> int:
    """`qgen fuse m1 m2 ... --combine mean|concat|vote`: an ensemble as one graph (codegen/fuse/ensemble_graph.py)."""
    from . import report
    from .fuse.ensemble_graph import ensemble

    if len(args.models) < 2:
        raise UserError(f"qgen fuse needs at least 2 models, got {len(args.models)}; compile one model with "
                        "qgen compile")
    calib = _load_array(args.calib, "calibration data") if args.calib else None
    if calib is None:
        print("warning: no --calib given; calibrating on random N(0,1) inputs. Pass real samples for "
              "accuracy.", file=sys.stderr)
    eval_x = _load_array(args.eval, "evaluation data") if args.eval else None
    eval_labels = _load_array(args.eval_labels, "evaluation labels") if args.eval_labels else None
    options = compile_options(args)
    result = ensemble(args.models, args.input_shape, combine=args.combine, calib_data=calib, options=options,
                      share_prefix=not args.no_share_prefix, out_dir=args.out, eval_data=eval_x, labels=eval_labels,
                      train=_train_data(args, options))
    report.print_table(result.report)
    e = result.report["ensemble"]
    print(f"ensemble of {e['members']} models ({args.combine}): {e['layers_before'] - 1} member layers -> "
          f"{e['layers'] - 1} after sharing identical leading layers ({e['weight_values_before']:,} -> "
          f"{e['weight_values']:,} weight values)")
    if args.verify:
        check = result.verify()
        print(check)
        if not check.exact:
            return 2
    print(f"wrote {args.out}/ ({args.prefix}_model.h, {args.prefix}_model.c, {args.prefix}_weights.c, kernels/)")
    return 0


def cmd_demo(args) -> int:
    from . import demo
    from .report import terminal_console

    demo.run(out_dir=args.out, console=terminal_console(), cache=not args.no_cache)
    return 0


def cmd_tune(args) -> int:
    from . import tuning as tune

    if args.show:
        if args.model:
            raise UserError("--show STUDY lists a stored study; give it alone (no model)")
        result = tune.load(args.show)
    else:
        missing = [f for f, v in (("model", args.model), ("--board", args.board), ("--data", args.data),
                                  ("--eval", args.eval)) if not v]
        if missing:
            raise UserError(f"qgen tune needs {', '.join(missing)} (or --show STUDY to list a stored study), e.g. "
                            "qgen tune model.py:factory --board stm32f446 --data train.npz --eval eval.npz")
        result = tune.tune(args.model, board=args.board, data=args.data, eval=args.eval, input_shape=args.input_shape,
                           trials=args.trials, study=args.study, workers=args.workers, scheduler=args.scheduler,
                           qemu=not args.no_qemu, max_latency_ms=args.max_latency_ms, max_flash=args.max_flash,
                           max_ram=args.max_ram, sampler=args.sampler, seed=args.seed,
                           finetune_epochs=args.finetune_epochs, qat=args.qat, presets=not args.no_presets,
                           objective=args.objective)
    print(result.table())
    if args.plot:
        print(f"wrote {tune.plot(result, args.plot)}")
    if args.html:
        print(f"wrote {tune.write_html(result, args.html)}")
    return 0


def add_compress_args(cmd) -> None:
    g = cmd.add_argument_group("compression (stored compactly in the generated C)")
    g.add_argument("--prune", type=float, help="unstructured sparsity, e.g. 0.8 (zero weights are not stored)")
    g.add_argument("--prune-scope", default="layer", choices=["layer", "global"])
    g.add_argument("--prune-steps", type=int, default=1, metavar="N",
                   help="gradual pruning: reach --prune in N rounds of prune + fine-tune (needs --finetune-epochs)")
    g.add_argument("--importance", default="magnitude", choices=["magnitude", "gradient"])
    g.add_argument("--channels", type=float, help="fraction of output channels to remove, e.g. 0.5")
    g.add_argument("--rank", help="low-rank factorisation: energy:0.95 or an explicit rank")
    g.add_argument("--cluster", type=int, help="weight sharing: bits per weight index (2..6)")
    g.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune after pruning (needs --train)")
    g.add_argument("--train", help="training samples .npy for fine-tuning / gradient importance")
    g.add_argument("--labels", help="integer labels .npy matching --train")


QUIET_HELP = ("no progress bars on stderr (they are shown only when stderr is a terminal; $QGEN_PROGRESS=plain "
              "gives one line per step instead, for CI logs)")


class _Parser(argparse.ArgumentParser):
    """argparse with qgen's exit codes: a bad command line is a user error (1), not argparse's 2, which
    qgen reserves for internal errors. Sub-command parsers inherit the class."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="qgen", description="Compile PyTorch models to bit-exact Q-format C "
                                "for microcontrollers.")
    p.add_argument("--version", action="version", version=f"qgen {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a model to C")
    c.add_argument("model", help="model.pt2, file.py:factory or package.module:factory")
    c.add_argument("--input-shape", type=_shape, help="example input shape, e.g. 1,1,8,8 (for factories)")
    c.add_argument("--calib", help="calibration samples, .npy float array (N, C, H, W) or (N, F)")
    c.add_argument("--out", default="build/model", help="output directory (written atomically)")
    c.add_argument("--prefix", default="model", help="C symbol prefix (a C identifier)")
    c.add_argument("--verify", action="store_true", help="compile the C for the host and check it is bit-exact")
    c.add_argument("--arduino", metavar="DIR", help="also write an Arduino library folder at DIR (library.properties, "
                   "src/ with the model and its kernels, an example sketch that prints the class)")
    c.add_argument("--cmake", action="store_true", help="also write a CMakeLists.txt: library target <prefix> and "
                   "the shared qgen_kernels (add_subdirectory + target_link_libraries), and "
                   "cmake/arm-none-eabi.cmake (toolchain file, -DQGEN_CPU=cortex-m4)")
    c.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "mse", "kl"],
                   help="how activation ranges are chosen (default minmax: no calibration value saturates)")
    c.add_argument("--percentile", type=float, default=99.99, help="for --calibration percentile")
    c.add_argument("--bias-correction", action="store_true", help="correct each channel's mean quantisation error")
    c.add_argument("--equalize", action="store_true", help="cross-layer equalisation by powers of two")
    c.add_argument("--arena-argument", action="store_true", help="<prefix>_run(in, out, arena) takes the arena "
                   "from the caller (reentrant: no static arena; size <PREFIX>_ARENA_SIZE)")
    c.add_argument("--stream", action="store_true", help="one frame at a time: <prefix>_step(frame, out) + "
                   "<prefix>_reset() for a model over a time axis (IR axis 1: Conv1d, GRU/LSTM); causal convolutions "
                   "keep their last frames, recurrent layers their state, in <PREFIX>_STATE_SIZE bytes")
    c.add_argument("--max-flash", type=_bytes, metavar="BYTES", help="refuse, before calibrating, a model whose "
                   "weights need more flash (default: the largest known board's; e.g. 2M, 512K)")
    c.add_argument("--max-ram", type=_bytes, metavar="BYTES", help="refuse a model whose activations need more "
                   "RAM (default: the largest known board's)")
    c.add_argument("--split-at", action="append", metavar="NODE",
                   help="cut after this layer (repeat for more parts); writes <out>/part<k>/")
    c.add_argument("--boards", type=lambda t: [b for b in t.split(",") if b],
                   help="two boards a,b: print split-point suggestions with the fit of each part")
    g = c.add_argument_group("mixed precision (int16 activations, int4 weights)")
    g.add_argument("--precision", action="append", metavar="LAYER=int16",
                   help="make a layer's output activations int16, or its weights int4 with LAYER=w4 (repeat, or "
                   "comma-separate), e.g. features.0=int16,fc=w4; LAYER=int8 keeps a layer all int8")
    g.add_argument("--weights", choices=("int8", "int4"), default="int8",
                   help="int4: every conv/depthwise/linear layer gets packed int4 weights (two per byte) where "
                   "its activations are int8")
    g.add_argument("--recurrent-state", choices=("int8", "int16"), default="int16",
                   help="hidden state of the GRU/LSTM/RNN layers: int16 (default, Q15) or int8 (the layer's own "
                   "int8 output: less RAM and work per step, less accurate)")
    g.add_argument("--auto-precision", action="store_true",
                   help="raise the most sensitive layers to int16 until --max-acc-drop is met")
    g.add_argument("--max-acc-drop", type=float, default=0.5, help="bound for --auto-precision, in points")
    g.add_argument("--eval", help="evaluation samples .npy for --auto-precision (default: --calib)")
    g.add_argument("--eval-labels", help="integer labels .npy for the evaluation samples (else: agreement with "
                   "the float model)")
    c.set_defaults(fn=cmd_compile)
    add_compress_args(c)

    z = sub.add_parser("compress", help="compile with compression (same options as compile) and show the "
                       "per-layer weight formats and sizes")
    for action in c._actions:
        if action.dest != "help":
            z._add_action(action)
    z.set_defaults(fn=cmd_compile)

    fu = sub.add_parser("fuse", help="an ensemble of models as ONE graph: one input, identical leading layers "
                        "computed once, outputs combined in the integer domain (same options as compile)")
    fu.add_argument("models", nargs="+", help="two or more models (each as qgen compile takes one), one input shape")
    fu.add_argument("--combine", choices=("mean", "concat", "vote"), default="mean",
                    help="mean: outputs averaged (one rounding); concat: side by side; vote: per-class vote counts "
                    "of the members' argmax (2 * votes + 1 on the decided class, s8.f1)")
    fu.add_argument("-o", "--out", default="build/ensemble", help="output directory (written atomically)")
    fu.add_argument("--no-share-prefix", action="store_true", help="compute every member's layers, also those "
                    "identical to another member's (a shared layer's output stays in RAM until its last reader)")
    for action in c._actions:
        if action.dest not in ("help", "model", "out", "split_at", "boards", "arduino", "cmake", "stream"):
            fu._add_action(action)
    fu.set_defaults(fn=cmd_fuse, stream=False)

    v = sub.add_parser("verify", help="check generated C == integer reference, bit for bit (host, cffi)")
    v.add_argument("dir", help="a qgen compile output directory")
    v.add_argument("--data", help="float samples .npy (default: the samples saved at compile time)")
    v.set_defaults(fn=cmd_verify)

    r = sub.add_parser("report", help="print the per-layer report of a compiled model (--html, --png: charts)")
    r.add_argument("dir")
    r.add_argument("--html", nargs="?", const="report.html", help="write one self-contained HTML file (default "
                   "report.html): layer graph, per-layer bars, arena timeline, board fit")
    r.add_argument("--png", nargs="?", const="report.png", help="the same charts as a PNG (needs matplotlib)")
    r.add_argument("--board", help="with --html/--png: flash and RAM gauges for this board (boards/*.toml)")
    r.add_argument("--qemu", action="store_true", help="with --board: count instructions per layer under QEMU")
    r.set_defaults(fn=cmd_report)

    def model_args(cmd):
        cmd.add_argument("model", help="a qgen output directory, or a model target as for `qgen compile`")
        cmd.add_argument("--board", required=True, help="board name (boards/*.toml), e.g. stm32f446, rp2040")
        cmd.add_argument("--input-shape", type=_shape)
        cmd.add_argument("--calib")
        cmd.add_argument("--prefix", default="model")

    f = sub.add_parser("firmware", help="build the model for a Cortex-M board: Makefile project, ELF, sizes, fit")
    model_args(f)
    f.add_argument("--out", default=None, help="output directory, written atomically (default build/firmware; "
                   "build/image with --image)")
    f.add_argument("--image", action="store_true", help="link for the board's real memory map and write flashable "
                   "firmware.bin, firmware.hex (and firmware.uf2 where the boot ROM takes UF2) instead of a project")
    f.set_defaults(fn=cmd_firmware)

    fl = sub.add_parser("flash", help="print (with --run: execute) the command that flashes a --image build")
    fl.add_argument("--board", required=True, help="board name (boards/*.toml)")
    fl.add_argument("--dir", default="build/image", help="the `qgen firmware --image` output directory")
    fl.add_argument("--probe", help="programming tool (default: the board's first; see [flash] in its TOML)")
    fl.add_argument("--port", help="AVR boards: the serial port of the bootloader (default: [flash] port in the "
                    "board's TOML, /dev/ttyACM0)")
    fl.add_argument("--run", action="store_true", help="execute the flash command (the board must be connected)")
    fl.set_defaults(fn=cmd_flash)

    q = sub.add_parser("run", help="run the model on a board under QEMU: bit-exact check, instruction count")
    model_args(q)
    q.add_argument("--qemu", action="store_true", help="run under QEMU (the only runner supported)")
    q.add_argument("--data", help="float samples .npy (default: the samples saved at compile time)")
    q.add_argument("-n", type=int, default=None, help="run only the first N samples")
    q.add_argument("--per-layer", action="store_true", help="also count instructions per layer")
    q.set_defaults(fn=cmd_run)

    m = sub.add_parser("micropython", help="generate a MicroPython module of the model (bit-exact)")
    m.add_argument("model", help="a qgen output directory, or a model target as for `qgen compile`")
    m.add_argument("--out", default="build/micropython")
    m.add_argument("--mode", default="pure", choices=["pure", "natmod", "usercmod"])
    m.add_argument("--input-shape", type=_shape)
    m.add_argument("--calib")
    m.add_argument("--prefix", default="model", help="module name (a Python/C identifier)")
    from .emit.mpy_native import NATMOD_ARCHS

    m.add_argument("--arch", default="x64", choices=NATMOD_ARCHS, help="natmod architecture (default x64)")
    m.add_argument("--micropython-src", help="natmod: MicroPython source tree to build the .mpy with "
                   "(default $QGEN_MICROPYTHON_SRC; without it the project is written, not built)")
    m.add_argument("--mpy-cross", help="natmod: the mpy-cross to use if the module has a Python part (default "
                   "$QGEN_MPY_CROSS, else the source tree's mpy-cross/build/mpy-cross, else mpy-cross on PATH)")
    m.set_defaults(fn=cmd_micropython)

    b = sub.add_parser("bundle", help="several compiled models in one firmware, sharing one arena")
    b.add_argument("models", nargs="+", help="qgen output directories (or their qgen_graph.json)")
    b.add_argument("--name", default="bundle", help="C prefix of the bundle (shared arena <name>_arena)")
    b.add_argument("--out", default="build/bundle")
    b.set_defaults(fn=cmd_bundle)

    mg = sub.add_parser("merge", help="several models of one architecture as one: W = sum C_i W_i (average, greedy "
                        "soup, coefficient search; --align for independently trained models)")
    mg.add_argument("models", nargs="+", help="[file.py:factory] a.pt b.pt ... (state dicts for the factory's "
                    "model) or a.pt2 b.pt2 ... (saved programs)")
    how = mg.add_mutually_exclusive_group()
    how.add_argument("--coeffs", help="one coefficient per model, >= 0, summing to 1, e.g. 0.5,0.3,0.2")
    how.add_argument("--uniform", action="store_true", help="the plain average (default)")
    how.add_argument("--greedy", action="store_true", help="greedy soup: add a model only if held-out accuracy "
                     "does not drop (needs --eval)")
    how.add_argument("--search", action="store_true", help="coefficients searched on held-out accuracy (--eval)")
    mg.add_argument("--align", action="store_true", help="permute each model's hidden units to match the "
                    "reference model (independently trained models): with --calib and --eval by weight matching or "
                    "by the correlation of their outputs on --calib, whichever merges better on --eval; with --calib "
                    "only by the correlation; else by weight matching")
    mg.add_argument("--align-by", choices=("auto", "weights", "activations"), help="implies --align: the matching "
                    "to use (auto: both, the better on --eval)")
    mg.add_argument("--reference", default="1", help="with --align: the model the others are matched to, its "
                    "position 1..n (default 1) or 'best' (best on --eval)")
    mg.add_argument("--calib", help="samples (.npy, or .npz with x) for BatchNorm re-estimation / REPAIR")
    mg.add_argument("--no-repair", action="store_true", help="keep the averaged statistics (no re-estimation)")
    mg.add_argument("--eval", help="held-out samples: .npz with x and y, or .npy with --eval-labels")
    mg.add_argument("--eval-labels", help="integer labels .npy of --eval")
    mg.add_argument("--input-shape", type=_shape, help="example input shape, e.g. 1,64 (if the factory gives none)")
    mg.add_argument("-o", "--out", required=True, help="merged.pt2 (for qgen compile) or merged.pt (state dict)")
    mg.set_defaults(fn=cmd_merge)

    d = sub.add_parser("demo", help="digits CNN: train/load, compile, verify, report")
    d.add_argument("--out", default="build/demo")
    d.add_argument("--no-cache", action="store_true", help="retrain instead of loading the cached model")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("tune", help="search compression and quantisation options for a board (Optuna, on Dask): "
                       "the Pareto front of accuracy, flash and latency, each point with its qgen compile command")
    t.add_argument("model", nargs="?", help="model.pt2, file.py:factory or package.module:factory")
    t.add_argument("--board", help="board name (boards/*.toml): its flash and RAM are hard limits, its core and "
                   "clock give the latency")
    t.add_argument("--data", help="training split .npz with arrays x (float samples) and y (integer labels): "
                   "calibration and fine-tuning")
    t.add_argument("--eval", help="evaluation split .npz (x, y): the accuracy of the integer reference")
    t.add_argument("--input-shape", type=_shape, help="example input shape, e.g. 1,1,8,8 (for factories)")
    t.add_argument("--trials", type=int, default=60, help="finished trials the study should hold (default 60; a "
                   "resumed study runs only the missing ones)")
    t.add_argument("--study", default="build/tune.journal", help="the study file (Optuna journal; data beside it "
                   "in STUDY.d/): rerunning resumes it")
    t.add_argument("--workers", type=int, default=2, help="Dask LocalCluster worker processes (0: in this process)")
    t.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://HOST:8786, instead "
                   "of a LocalCluster")
    t.add_argument("--no-qemu", action="store_true", help="no QEMU runs: the fourth objective is MACs, not ms")
    t.add_argument("--max-latency-ms", type=float, help="hard latency limit (instructions under QEMU at the "
                   "board's clock, 1 instruction/cycle)")
    t.add_argument("--max-flash", type=_bytes, metavar="BYTES", help="weight flash limit (default: the board's)")
    t.add_argument("--max-ram", type=_bytes, metavar="BYTES", help="arena limit (default: the board's, less stack)")
    t.add_argument("--sampler", default="nsga2", choices=["nsga2", "tpe"], help="Optuna sampler (default NSGA-II)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--finetune-epochs", type=int, default=2, help="most fine-tuning epochs a trial may use")
    t.add_argument("--qat", action="store_true", help="also search quantisation-aware training on/off")
    t.add_argument("--no-presets", action="store_true", help="start a new study from the default compile only, "
                   "not also from the standard single techniques (prune 50/80%%, channels 25/50%%, cluster 4, int4)")
    t.add_argument("--show", metavar="STUDY", help="list the Pareto front of a stored study and exit")
    t.add_argument("--plot", metavar="PNG", help="also plot accuracy vs flash (needs matplotlib)")
    t.add_argument("--html", metavar="HTML", help="also write the front as one self-contained HTML page (table, "
                   "each point's qgen compile command, the plot when matplotlib is installed)")
    t.add_argument("--objective", default="pareto", choices=["pareto", "accuracy"],
                   help="pareto (default): accuracy, weight flash, arena and latency together, the Pareto front; "
                   "accuracy: the best accuracy under the flash/RAM/latency limits, with an Optuna MedianPruner "
                   "stopping trials whose accuracy after a fine-tuning epoch is below the earlier trials' median")
    t.set_defaults(fn=cmd_tune)
    for cmd in sub.choices.values():  # also after the command: `qgen compile ... --quiet`
        cmd.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return p


def _closed_stdout() -> int:
    """The reader of our output went away (`qgen ... | head -1`): stop quietly, as a killed-by-SIGPIPE tool.

    stdout is pointed at /dev/null so that Python's final flush does not raise a second time.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and temporary directory is cleaned up."""


def _on_sigterm(signum, frame):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _warning_printer(default):
    """showwarning that prints qgen's own warnings as 'warning: ...' on stderr, others as before."""
    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("codegen"):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def _main(argv: list[str] | None = None) -> int:
    try:  # building the parser imports much of qgen: Ctrl-C there is an interruption too, not a traceback
        args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    try:
        if getattr(args, "out", None) is not None:
            from .api import check_out_dir

            args.out = str(check_out_dir(args.out))  # not '.', a parent of it, or a dangling symlink
        from . import progress

        with warnings.catch_warnings():  # qgen's own warnings (e.g. a calibration fallback): one line each
            warnings.showwarning = _warning_printer(warnings.showwarning)
            with progress.enabled(progress.cli_mode(quiet=getattr(args, "quiet", False))):  # stderr only
                status = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return status
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        terminated = isinstance(exc, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130  # 128 + the signal, as a shell reports it
    except BrokenPipeError:
        return _closed_stdout()
    except Exception:
        traceback.print_exc()
        print("internal error in qgen: please report it with the traceback above", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
