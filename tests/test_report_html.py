"""`qgen report --html/--png` (issue 19, item 4): one self-contained HTML file with every layer and the totals,
well-formed, nothing fetched, user text inert; the arena timeline shows exactly the planned overlaps."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import codegen
from codegen import report_html
from codegen.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/
from golden_models import BranchNet  # noqa: E402

EVIL = "</script><img src=x onerror=alert(1)>"
VOID = {"meta", "br", "img", "input", "link", "hr", "area", "base", "col", "embed", "source", "track", "wbr"}


class TagChecker(HTMLParser):
    """Balanced tags (void elements aside), and every start tag seen."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}> at {self.getpos()}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert checker.stack == [], checker.stack
    return checker


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from codegen import demo

    torch.manual_seed(0)
    x_tr, _, _, _ = demo.digits_data()
    out = tmp_path_factory.mktemp("report") / "digits"
    codegen.compile(demo.make_model().eval(), torch.from_numpy(x_tr[:1]), x_tr[:64], prefix="digits", out_dir=out)
    return out


@pytest.fixture(scope="module")
def digits(digits_dir):
    from codegen.api import load_compiled

    return load_compiled(digits_dir)  # as `qgen report DIR` sees it (report.json, qgen_graph.json)


@pytest.fixture(scope="module")
def branch():
    torch.manual_seed(1)
    return codegen.compile(BranchNet().eval(), torch.zeros(1, 2, 8, 8), np.random.default_rng(0).standard_normal(
        (16, 2, 8, 8)).astype(np.float32), prefix="branch")


def _check_report(result, text: str) -> TagChecker:
    checker = parse(text)
    visible = html.unescape("".join(checker.text))
    for layer in result.report["layers"]:
        assert f'data-layer="{layer["index"]}"' in text
        assert layer["name"] in text  # the full name (the row shows it shortened, the tooltip whole)
        assert layer["op"] in visible and layer["q_out"] in visible
    for total in (result.report["macs"], result.report["arena_bytes"], result.report["flash_bytes"]):
        assert f"{total:,}" in visible
    assert not re.search(r"https?://", text), re.search(r".{40}https?://.{40}", text)
    assert "<link" not in text and " src=" not in text and "@import" not in text and "url(" not in text
    return checker


@pytest.mark.parametrize("name", ["digits", "branch"])
def test_html_has_every_layer_and_the_totals(name, request, tmp_path):
    result = request.getfixturevalue(name)
    written = report_html.write_report(result, html=tmp_path / "r.html", board="stm32f446")
    text = (tmp_path / "r.html").read_text()
    assert written == {str(tmp_path / "r.html"): len(text.encode())}
    _check_report(result, text)
    assert 'id="fit-flash"' in text and 'id="fit-ram"' in text and "stm32f446" in text
    assert len(result.report["layers"]) == len(re.findall(r'<g class="row"', text))


def test_branches_are_drawn_as_skip_edges(branch):
    data = report_html.visual_data(branch.graph, branch.report)
    skips = [p for p in data["chart"]["paths"] if p["skip"]]
    # BranchNet: the residual add reads the relu output two rows up; the concat reads sigmoid and tanh
    add = next(i for i, n in enumerate(branch.graph.nodes) if n.op.value == "add")
    cat = next(i for i, n in enumerate(branch.graph.nodes) if n.op.value == "concat")
    edges = report_html._edges(branch.graph)
    assert any(b == add + 1 and b - a > 1 for a, b in edges) and any(b == cat + 1 and b - a > 1 for a, b in edges)
    assert len(skips) == sum(1 for a, b in edges if b - a > 1) >= 2


@pytest.mark.parametrize("name", ["digits", "branch"])
def test_arena_timeline_is_the_plan(name, request):
    """One rectangle per arena buffer at its planned offset; rectangles overlap only where plan_memory
    wrote an output over its dying input (Buffer.over), and every such overlap is listed."""
    result = request.getfixturevalue(name)
    g = result.graph
    buffers = report_html.arena_buffers(g)
    assert max(b["offset"] + b["size"] for b in buffers) <= g.arena_size == result.report["arena_bytes"]
    arena_tensors = {t for t, (region, _) in g.memory.items() if region == "arena" and not t.startswith("scratch:")}
    shown = {t for b in buffers if not b["scratch"] for t in b["tensors"]}
    assert shown == arena_tensors
    for i, j in report_html._overlaps(buffers):
        a, b = buffers[i], buffers[j]
        assert a["over"] in b["tensors"] or b["over"] in a["tensors"], (a, b)
    chart = report_html.visual_data(g, result.report)["arena"]
    assert len(chart["rects"]) == len(buffers) and len(chart["overlaps"]) == len(report_html._overlaps(buffers))


def test_in_place_overlap_is_outlined():
    """Depthwise and pointwise convs writing over their dying inputs (planned in-place overlaps): the timeline
    outlines both buffers of each pair and lists the pairs."""
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Flatten(),
                          nn.Linear(16 * 12 * 12, 2)).eval()
    result = codegen.compile(model, torch.zeros(1, 3, 12, 12), np.random.default_rng(0).standard_normal(
        (8, 3, 12, 12)).astype(np.float32), prefix="ov")
    pairs = report_html._overlaps(report_html.arena_buffers(result.graph))
    assert pairs, "this plan has no in-place overlap any more: pick another model for this test"
    data = report_html.visual_data(result.graph, result.report)
    text = report_html.render_html(data)
    assert text.count('class="buf overlap"') == len({i for pair in pairs for i in pair})
    assert f"{len(pairs)} in-place overlap(s)" in text
    assert all(o["bytes"] > 0 for o in data["arena"]["overlaps"])


def test_layer_names_and_model_source_are_inert(branch):
    """Layer names and the model source are data: autoescaped, never markup or script."""
    report = {**branch.report, "model": "<b>model</b>" + EVIL,
              "layers": [{**layer, "name": EVIL + layer["name"], "source": EVIL} for layer in branch.report["layers"]]}
    text = report_html.render_html(report_html.visual_data(branch.graph, report))
    checker = parse(text)
    assert "img" not in checker.tags and "b" not in checker.tags
    assert text.count("<script>") == 1 and text.count("</script>") == 1  # only the template's own
    assert "onerror=alert" not in text.replace("onerror=alert(1)&gt;", "")  # only escaped copies
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert html.unescape("".join(checker.text)).count(EVIL) >= len(report["layers"])


def test_mobilenet_report_is_small_and_fast(tmp_path):
    from examples.zoo.models import mobilenet_v2

    model, x = mobilenet_v2()
    result = codegen.compile(model, x, np.random.default_rng(0).standard_normal((2, *x.shape[1:])).astype(np.float32),
                             prefix="mnv2")
    start = time.perf_counter()
    report_html.write_report(result, html=tmp_path / "m.html", board="stm32h743")
    seconds = time.perf_counter() - start
    text = (tmp_path / "m.html").read_text()
    assert len(text.encode()) < 1_000_000 and seconds < 2.0, (len(text), seconds)
    _check_report(result, text)


def test_instructions_bars_from_a_per_layer_run(digits):
    """A per-layer run's counts (TargetRun.per_layer, as QEMU gives them) add an instructions column and the
    total; no run, no column."""
    from types import SimpleNamespace

    from codegen.target import load_board

    n = len(digits.graph.nodes)
    counts = [1000.0 * (i + 1) for i in range(n)]
    run = SimpleNamespace(per_layer=[(node.where(), 0, c) for node, c in zip(digits.graph.nodes, counts)],
                          instructions_per_inference=sum(counts) + 77, instructions_per_mac=1.5,
                          board=load_board("stm32f446"))
    data = report_html.visual_data(digits.graph, digits.report, run=run)
    titles = [c["title"] for c in data["chart"]["columns"]]
    assert "instructions" in titles
    k = titles.index("instructions") - len(report_html.TEXT_COLS)
    assert [r["cells"][k]["label"] for r in data["rows"]] == [f"{c:,.0f}" for c in counts]
    assert data["rows"][-1]["cells"][k]["w"] == report_html.BAR_W  # the largest is a full bar
    text = report_html.render_html(data)
    assert f"{sum(counts) + 77:,.0f}" in text and "QEMU, stm32f446" in text
    assert "instructions" not in [c["title"] for c in report_html.visual_data(digits.graph, digits.report)
                                  ["chart"]["columns"]]


def test_png_or_a_clear_refusal(digits, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    report_html.write_report(digits, png=tmp_path / "r.png", board="rp2040")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(UserError, match="needs matplotlib"):
        report_html.write_report(digits, html=tmp_path / "both.html", png=tmp_path / "both.png")
    assert not (tmp_path / "both.html").exists() and not (tmp_path / "both.png").exists()


def test_cli_report_html(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    codegen.compile(model, torch.zeros(1, 6), torch.randn(8, 6).numpy(), prefix="m", out_dir=tmp_path / "m")
    cli = [sys.executable, "-m", "codegen.cli", "report", str(tmp_path / "m")]
    proc = subprocess.run([*cli, "--html", str(tmp_path / "r.html"), "--board", "rp2040"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "wrote" in proc.stdout and (tmp_path / "r.html").is_file(), proc.stderr
    assert "rp2040" in (tmp_path / "r.html").read_text()
    proc = subprocess.run([*cli, "--board", "rp2040"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "add --html" in proc.stderr and "Traceback" not in proc.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_real_browser_loads_it(branch, tmp_path):
    """Headless Chromium loads the report (with a hostile layer name): the DOM has every layer, the totals and
    no injected element; the page logs no console error; a screenshot is taken."""
    report = {**branch.report, "layers": [{**layer, "name": layer["name"] + (EVIL if i == 0 else "")}
                                          for i, layer in enumerate(branch.report["layers"])]}
    page = tmp_path / "r.html"
    page.write_text(report_html.render_html(report_html.visual_data(branch.graph, report)))
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    checker = parse(dom.stdout)
    assert "img" not in checker.tags
    visible = html.unescape("".join(checker.text))
    for layer in report["layers"]:
        assert layer["name"] in visible
    assert f"{report['macs']:,}" in visible and f"{report['arena_bytes']:,}" in visible
    shot = subprocess.run([*base, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1280,1600", page.as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG", shot.stderr[-2000:]
    console = [line for line in (dom.stderr + shot.stderr).splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console


def _missing_qemu_tools() -> list[str]:
    from codegen.target import missing_tools

    return missing_tools()


@pytest.mark.skipif(bool(_missing_qemu_tools()), reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_instructions_from_a_real_qemu_run(digits_dir):
    """What `qgen report DIR --html --board B --qemu` draws: deploy.run(per_layer=True) under QEMU, one
    instruction bar per layer, and the total per inference."""
    from codegen import deploy
    from codegen.api import load_compiled

    result = load_compiled(digits_dir)
    run = deploy.run(digits_dir, "mps2-an385", n=1, per_layer=True)
    data = report_html.visual_data(result.graph, result.report, run=run)
    titles = [c["title"] for c in data["chart"]["columns"]]
    k = titles.index("instructions") - len(report_html.TEXT_COLS)
    assert [r["cells"][k]["label"] for r in data["rows"]] == [f"{count:,.0f}" for _, _, count in run.per_layer]
    conv = next(i for i, n in enumerate(result.graph.nodes) if n.op.value == "conv2d")
    assert run.per_layer[conv][2] >= result.report["layers"][conv]["macs"]  # at least one instruction per MAC
    assert f"{run.instructions_per_inference:,.0f}" in report_html.render_html(data)


def test_write_file_atomic(tmp_path, monkeypatch):
    """The report file is replaced whole or not at all, with the umask's mode, and no temporary is left."""
    import os

    from codegen.output import write_file_atomic

    path = tmp_path / "r.html"
    write_file_atomic(path, "old")
    write_file_atomic(path, b"new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_file_atomic(path, "half")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    monkeypatch.undo()
    with pytest.raises(UserError, match="is a directory"):
        write_file_atomic(tmp_path, "x")
    with pytest.raises(UserError, match="does not exist"):
        write_file_atomic(tmp_path / "no" / "r.html", "x")
