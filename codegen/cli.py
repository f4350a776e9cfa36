"""qgen command line: thin wrappers over the Python API (codegen.api).

Exit codes: 0 ok, 1 user error (message only), 2 internal error (traceback; please report).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np

from .errors import UserError


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,1,8,8") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,1,8,8")
    return shape


def _load_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
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


def cmd_compile(args) -> int:
    from . import compile as qcompile
    from . import report

    calib = _load_array(args.calib, "calibration data") if args.calib else None
    if calib is None:
        print("warning: no --calib given; calibrating on random N(0,1) inputs. Pass real samples for "
              "accuracy.", file=sys.stderr)
    result = qcompile(args.model, args.input_shape, calib, prefix=args.prefix, out_dir=args.out)
    report.print_table(result.report)
    if args.verify:
        check = result.verify()
        print(check)
        if not check.exact:
            return 2
    print(f"wrote {args.out}/ ({args.prefix}_model.h, {args.prefix}_model.c, {args.prefix}_weights.c, kernels/)")
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
    report.print_table(json.loads(path.read_text()))
    return 0


def _model_dir(args, tmp: Path) -> Path:
    """A qgen output directory, or compile the model target first (same options as `qgen compile`)."""
    target = Path(args.model)
    if target.is_dir():
        return target
    from . import compile as qcompile

    calib = _load_array(args.calib, "calibration data") if args.calib else None
    qcompile(args.model, args.input_shape, calib, prefix=args.prefix, out_dir=tmp / "model")
    return tmp / "model"


def cmd_firmware(args) -> int:
    import tempfile

    from . import deploy

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model_dir(args, Path(tmp))
        fw = deploy.build(model_dir, args.board, Path(tmp) / "build", project_dir=args.out)
        s = fw.elf.sizes
    print(f"board {fw.board.name}: {fw.board.description}")
    print(f".text {s.text:,} B  .rodata {s.rodata:,} B  .data {s.data:,} B  .bss {s.bss:,} B  (harness included)")
    print(deploy.fit_line(fw.elf))
    print(f"wrote {args.out}/ (Makefile project: `make`, `make run` under QEMU)")
    return 0


def cmd_run(args) -> int:
    import tempfile

    from . import deploy

    if not args.qemu:
        raise UserError("only --qemu runs are supported here (no board is attached); add --qemu")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model_dir(args, Path(tmp))
        x = None
        if args.data:
            from .api import load_compiled

            x = load_compiled(model_dir).quantize_input(_load_array(args.data, "input data"))
        result = deploy.run(model_dir, args.board, x, args.n, per_layer=args.per_layer)
    for line in result.summary():
        print(line)
    return 0 if result.exact else 3


def cmd_micropython(args) -> int:
    import tempfile

    from .api import load_compiled
    from .emit.c import banner_lines, write_atomic
    from .emit.micropython import render_micropython

    if args.mode != "pure":
        raise UserError(f"--mode {args.mode} is not available yet; use --mode pure (a plain MicroPython module)")
    with tempfile.TemporaryDirectory() as tmp:
        compiled = load_compiled(_model_dir(args, Path(tmp)))
        command = "qgen micropython " + " ".join(sys.argv[2:])
        files = render_micropython(compiled.graph, args.prefix, banner_lines(compiled.graph.source, command))
    write_atomic(files, Path(args.out))
    print(f"wrote {args.out}/{args.prefix}.py: `mpremote cp {args.out}/{args.prefix}.py :` then "
          f"`import {args.prefix}; {args.prefix}.predict(input_bytes)`")
    return 0


def cmd_demo(args) -> int:
    from rich.console import Console

    from . import demo

    demo.run(out_dir=args.out, console=Console(), cache=not args.no_cache)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="qgen", description="Compile PyTorch models to bit-exact Q-format C "
                                "for microcontrollers.")
    p.add_argument("--version", action="version", version=f"qgen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a model to C")
    c.add_argument("model", help="model.pt2, file.py:factory or package.module:factory")
    c.add_argument("--input-shape", type=_shape, help="example input shape, e.g. 1,1,8,8 (for factories)")
    c.add_argument("--calib", help="calibration samples, .npy float array (N, C, H, W) or (N, F)")
    c.add_argument("--out", default="build/model", help="output directory (written atomically)")
    c.add_argument("--prefix", default="model", help="C symbol prefix (a C identifier)")
    c.add_argument("--verify", action="store_true", help="compile the C for the host and check it is bit-exact")
    c.set_defaults(fn=cmd_compile)

    v = sub.add_parser("verify", help="check generated C == integer reference, bit for bit (host, cffi)")
    v.add_argument("dir", help="a qgen compile output directory")
    v.add_argument("--data", help="float samples .npy (default: the samples saved at compile time)")
    v.set_defaults(fn=cmd_verify)

    r = sub.add_parser("report", help="print the per-layer report of a compiled model")
    r.add_argument("dir")
    r.set_defaults(fn=cmd_report)

    def model_args(cmd):
        cmd.add_argument("model", help="a qgen output directory, or a model target as for `qgen compile`")
        cmd.add_argument("--board", required=True, help="board name (boards/*.toml), e.g. stm32f446, rp2040")
        cmd.add_argument("--input-shape", type=_shape)
        cmd.add_argument("--calib")
        cmd.add_argument("--prefix", default="model")

    f = sub.add_parser("firmware", help="build the model for a Cortex-M board: Makefile project, ELF, sizes, fit")
    model_args(f)
    f.add_argument("--out", default="build/firmware", help="project directory (written atomically)")
    f.set_defaults(fn=cmd_firmware)

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
    m.set_defaults(fn=cmd_micropython)

    d = sub.add_parser("demo", help="digits CNN: train/load, compile, verify, report")
    d.add_argument("--out", default="build/demo")
    d.add_argument("--no-cache", action="store_true", help="retrain instead of loading the cached model")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("internal error in qgen: please report it with the traceback above", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
