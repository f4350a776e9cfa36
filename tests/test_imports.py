"""Import rules of the package, read from the source (ast): no cycle between emit/c.py and
emit/weight_formats.py, and no pass (codegen/passes/*) importing an emitter (codegen.emit.*). A module's own
imports count wherever they are (function-level too); what they bring in is followed through module-level
imports (what importing it really loads)."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import codegen

ROOT = Path(codegen.__file__).resolve().parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level(tree: ast.Module):
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                     *(x for h in getattr(node, "handlers", []) for x in h.body)]


def imports_of(path: Path, everywhere: bool = True) -> set[str]:
    """codegen.* modules that `path` imports (anywhere in its body, or only at module level)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in (ast.walk(tree) if everywhere else _top_level(tree)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("codegen")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("codegen"):
                continue
            found.add(target)
            for a in node.names:  # `from . import escape`: the submodule
                if (ROOT.parent / (target.replace(".", "/") + f"/{a.name}.py")).is_file():
                    found.add(f"{target}.{a.name}")
    return found


@functools.lru_cache(maxsize=None)
def _graph(everywhere: bool = False) -> dict[str, set[str]]:
    return {_module(p): imports_of(p, everywhere) for p in ROOT.rglob("*.py")}


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """module -> the import chain from `start` that reaches it: `start`'s own imports wherever they are,
    then module-level imports."""
    own = _graph(everywhere=True)[start]
    paths = {start: [start]}
    todo = [start]
    while todo:
        mod = todo.pop()
        for dep in sorted(own if mod == start else graph.get(mod, ())):
            if dep not in paths and dep in graph:
                paths[dep] = [*paths[mod], dep]
                todo.append(dep)
    return paths


def test_no_pass_imports_an_emitter():
    graph = _graph()
    passes = [m for m in graph if m.startswith("codegen.passes.")]
    assert passes
    bad = {}
    for mod in passes:
        for dep, chain in _reachable(graph, mod).items():
            if dep.startswith("codegen.emit"):
                bad[mod] = " -> ".join(chain)
                break
    assert not bad, bad


def test_weight_formats_does_not_import_the_c_emitter():
    graph = _graph()
    assert "codegen.emit.weight_formats" in graph["codegen.emit.c"] or \
        "codegen.emit.weight_formats" in _reachable(graph, "codegen.emit.c")
    chain = _reachable(graph, "codegen.emit.weight_formats").get("codegen.emit.c")
    assert chain is None, " -> ".join(chain)


def test_the_rules_see_a_violation(tmp_path):
    """The parser finds relative, function-level and `from . import x` imports."""
    p = ROOT / "passes" / "fold_pad.py"
    src = "def f():\n    from ..emit.c import render\n    from .. import report\n"
    tree = tmp_path / "codegen" / "passes"
    tree.mkdir(parents=True)
    (tree / "x.py").write_text(src)
    found = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            found.add((node.level, node.module))
    assert (2, "emit.c") in found and (2, None) in found
    assert "codegen.ir" in imports_of(p) or "codegen.passes" in imports_of(p) or imports_of(p)


def test_verify_firmware_and_run_of_a_compiled_directory_never_import_torch(tmp_path):
    """`qgen verify/firmware/run DIR` need the generated files, not PyTorch: torch stays unloaded (start-up time,
    and a deployment box without torch). The whole command runs in a child so this process's imports don't count."""
    import shutil
    import subprocess
    import sys

    import numpy as np
    import torch

    out = tmp_path / "out"
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    codegen.compile(model, torch.zeros(1, 6), np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32),
                    prefix="m", out_dir=out)
    np.save(tmp_path / "d.npy", np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32))
    commands = [["verify", str(out), "--data", str(tmp_path / "d.npy")]]
    if shutil.which("arm-none-eabi-gcc"):
        commands.append(["firmware", str(out), "--board", "mps2-an386", "--out", str(tmp_path / "fw")])
    probe = ("import sys\nfrom codegen import cli\nsys.argv = ['qgen'] + sys.argv[1:]\nrc = cli.main()\n"
             "print('TORCH', 'torch' in sys.modules)\nsys.exit(rc)\n")
    for cmd in commands:
        r = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "TORCH False" in r.stdout, (cmd, r.stdout)


def test_fuse_functions_survive_every_import_order():
    # importing a submodule binds it as an attribute of its package: a submodule named like the function
    # (codegen/fuse/merge.py) made `codegen.fuse.merge` the module once anything had imported it
    import subprocess
    import sys

    calls = ("import codegen.fuse as f; assert callable(f.merge) and callable(f.ensemble), (f.merge, f.ensemble); "
             "assert f.merge.__name__ == 'merge' and f.ensemble.__name__ == 'ensemble'; "
             "from codegen.fuse import merge, ensemble; assert merge is f.merge and ensemble is f.ensemble")
    orders = {"function first": "import codegen.fuse; codegen.fuse.merge; codegen.fuse.ensemble; "
                                "import codegen.fuse.weight_merge, codegen.fuse.ensemble_graph",
              "submodules first": "import codegen.fuse.weight_merge, codegen.fuse.ensemble_graph; "
                                  "from codegen.fuse.weight_merge import merge; "
                                  "from codegen.fuse.ensemble_graph import ensemble",
              "cli first": "import codegen.cli",
              "package only": "import codegen.fuse, sys; assert 'codegen.fuse.weight_merge' not in sys.modules"}
    for name, first in orders.items():
        r = subprocess.run([sys.executable, "-c", f"{first}\n{calls}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
