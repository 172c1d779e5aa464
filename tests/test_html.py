"""The HTML report and comparison in a real browser: Debian's chromium, headless, loads each page from disk with
the network unused, logs what the page printed or failed on, screenshots it at a phone's and a desktop's width,
and dumps the DOM it built — which must hold every variant's name, the summary sentences and the verdict lines.

The pages come from real runs: `runlab-agent run --html` of two variants served by tests/standins/delayed.py (the
second 30 ms slower to start and 3 ms slower per request), twice, the second time with that variant much slower
(300 ms, 12 ms: far beyond the noise of a loaded machine); then `runlab compare --format html` of the JSON files.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runlab.report.html import W, write_report
from runlab.results import ExperimentResult, Figure, Footprint, VariantResult, decode_json
from tests.conftest import REPO
from tests.test_operator import runlab

DELAYED = REPO / "tests" / "standins" / "delayed.py"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


# what chromium logs (--enable-logging=stderr --v=0) when a page prints, throws or fails to load something
CONSOLE_TROUBLE = r"Uncaught|:CONSOLE[:(]|Failed to load resource|net::ERR_"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run scripts/ensure-system-packages (Debian package chromium)")
    return path


def browse(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                           capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    # nothing the page ran or loaded went wrong (it has no script; a stray one would show here)
    assert not re.search(CONSOLE_TROUBLE, r.stderr), r.stderr[-2000:]
    return r


def shoot(page: Path, out: Path, width: int) -> bytes:
    browse(page, f"--screenshot={out}", f"--window-size={width},2400")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == width  # the PNG is as wide as the window asked for
    return data


def dom_text(page: Path, phone_shot: Path) -> str:
    """The page's text as the browser built it; the same load takes the phone-width screenshot."""
    dom = browse(page, "--dump-dom", f"--screenshot={phone_shot}", "--window-size=390,2400").stdout
    data = phone_shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 390
    assert "<svg" in dom and "</html>" in dom
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", " ", dom, flags=re.S))
    return " ".join(html.unescape(text).split())


def experiment(tmp: Path, name: str, slow_start: int, slow_delay: int) -> Path:
    exp = tmp / f"{name}.yaml"
    exp.write_text(f"""\
name: html-page
repeat: 6
warmup: 1
phases: [cold_start, footprint, load]
ready: {{http: "http://127.0.0.1:{{port}}/", timeout: 30s}}
settle: 50ms
load: {{requests: 200, concurrency: 2}}
variants:
  - name: quick-server
    runtime: process
    command: [{sys.executable}, -S, -I, {DELAYED}, --port, "{{port}}"]
  - name: sleepy-server
    runtime: process
    command: [{sys.executable}, -S, -I, {DELAYED}, --port, "{{port}}", --start-ms, "{slow_start}",
              --delay-ms, "{slow_delay}"]
""")
    return exp


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("html")
    out: dict[str, Path] = {}
    for name, start, delay in (("before", 30, 3), ("after", 300, 12)):
        r = subprocess.run([sys.executable, "-m", "agent", "run", str(experiment(tmp, name, start, delay)),
                            "--json", str(tmp / f"{name}.json"), "--html", str(tmp / f"{name}.html"), "--quiet"],
                           cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ})
        assert r.returncode == 0, r.stdout + r.stderr
        out[name], out[f"{name}.json"] = tmp / f"{name}.html", tmp / f"{name}.json"
    r = runlab("compare", str(out["before.json"]), str(out["after.json"]), "--format", "html", "--out",
               str(tmp / "compare.html"), "--fail-on", "worse:5%")
    assert r.returncode == 1, r.stdout + r.stderr  # the gate fails: the page says so too
    out["compare"] = tmp / "compare.html"
    return out


def test_the_browser_check_sees_script_errors(tmp_path: Path) -> None:
    """The console check above can fail: a page that logs and throws is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><p>x</p><script>console.log("hi"); notDefined();</script>')
    with pytest.raises(AssertionError, match="Uncaught ReferenceError: notDefined is not defined"):
        browse(page, "--dump-dom")


@pytest.mark.parametrize("name", ["before", "compare"])
def test_pages_are_one_self_contained_file(pages: dict[str, Path], name: str) -> None:
    text = pages[name].read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and 'name=viewport content="width=device-width' in text
    assert "<script" not in text.lower()
    # nothing to fetch: no src/href/url(), no link element; the only URL is the SVG namespace, never loaded
    assert not re.search(r"\b(src|href)\s*=|url\(|<link|@import", text, re.I)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {"http://www.w3.org/2000/svg"}
    assert len(text.encode()) < 300_000


def test_report_page_in_a_browser(pages: dict[str, Path], tmp_path: Path) -> None:
    local = decode_json(pages["before.json"].read_bytes())
    text = dom_text(pages["before"], tmp_path / "report-390.png")
    for v in local.variants:
        assert v.name in text
    assert "Cold start" in text and "Idle memory" in text and "Latency under load" in text
    for c in local.comparisons:  # the seed-style sentences, as the terminal prints them
        assert c.sentence in text
    assert any("sleepy-server closed-loop latency" in c.sentence and "slower (95 % CI" in c.sentence
               for c in local.comparisons)
    assert local.comparisons[0].sentence in text[:text.index("Cold start")]  # summary first, then the plots
    shoot(pages["before"], tmp_path / "report-1280.png", 1280)


def test_compare_page_in_a_browser(pages: dict[str, Path], tmp_path: Path) -> None:
    text = dom_text(pages["compare"], tmp_path / "compare-390.png")
    assert "FAIL:" in text and "significantly worse by 5 % or more" in text
    assert re.search(r"sleepy-server cold start: [0-9.,]+ ms vs [0-9.,]+ ms before — [0-9.,]+(×| %) slower "
                     r"\(95 % CI [^)]*Holm p [^)]*\) — worse", text), text[:3000]
    assert re.search(r"sleepy-server closed-loop latency: [^—]* — [0-9.,]+(×| %) slower \(95 % CI [^)]*\) — worse",
                     text), text[:3000]
    assert "quick-server cold start" in text and "quick-server idle memory (PSS)" in text
    assert "Ratios at a glance" in text and "Holm–Bonferroni" in text
    shoot(pages["compare"], tmp_path / "compare-1280.png", 1280)


def test_plots_fit_a_phone_and_escape_what_they_print() -> None:
    """Pure: the SVGs are drawn in a 380-unit box (≈ CSS px on a phone), and names are escaped."""
    assert W <= 400
    r = ExperimentResult(
        experiment="<b>x</b>", run="r1", file="", file_sha256="", started="", finished="", machine={},
        methodology={}, variants=[VariantResult(name="a<script>", runtime="process",
                                                startup_ms=Figure.of([1.0, 2.0, 3.0], "ms"),
                                                footprint=Footprint(pss_bytes=700_000, uss_bytes=1, rss_bytes=1,
                                                                    processes=1))])
    page = write_report([r])
    assert "<script>" not in page and "a&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "683.6 KiB" in page  # small memory is written out, not left to a bar's length


def test_png_plot_draws_memory_on_a_log_axis_and_latency_from_histograms(
        pages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--plot: the memory panel is log-scaled with every value written on its bar; latency is a step CDF."""
    import matplotlib.axes

    from collector.ops.plotting import plot_results

    seen: dict[str, object] = {}
    real_label, real_step = matplotlib.axes.Axes.bar_label, matplotlib.axes.Axes.step

    def bar_label(ax: matplotlib.axes.Axes, bars: object, labels: list[str], **kw: object) -> object:
        seen["labels"], seen["yscale"] = labels, ax.get_yscale()
        return real_label(ax, bars, labels, **kw)  # type: ignore[arg-type]

    def step(ax: matplotlib.axes.Axes, x: list[float], y: list[float], *a: object, **kw: object) -> object:
        seen.setdefault("steps", []).append(len(x))  # type: ignore[union-attr]
        return real_step(ax, x, y, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(matplotlib.axes.Axes, "bar_label", bar_label)
    monkeypatch.setattr(matplotlib.axes.Axes, "step", step)
    local = decode_json(pages["before.json"].read_bytes())
    local.variants[0].footprint.pss_bytes = 700 * 1024  # type: ignore[union-attr]
    local.variants[1].footprint.pss_bytes = 182 * 2**20  # type: ignore[union-attr]
    width, height = plot_results([local], str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG" and width > 600 and height > 900
    assert seen["yscale"] == "log" and seen["labels"] == ["700.0 KiB", "182.0 MiB"]
    assert len(seen["steps"]) == 2 and all(n > 5 for n in seen["steps"])  # type: ignore[arg-type]
