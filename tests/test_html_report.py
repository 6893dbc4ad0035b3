"""report.html: one self-contained page per run folder (cv, ablation, demo), rendering the summary's own
tables, with figures embedded as data URIs; opened in headless Chromium it makes no request but itself."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_report import ablation_dir, corpus, write_arm  # noqa: F401 (fixtures: hand-made run folders)

from ctxemo.cli import main
from ctxemo.reports.comparison import regenerate
from ctxemo.reports.html_report import write_report

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


class Resources(HTMLParser):
    """Every tag and every URL-bearing attribute of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value for name, value in attrs if name in ("src", "href", "srcset", "data", "action", "poster")]


def resources(page: Path) -> Resources:
    parser = Resources()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_ablation_report_is_self_contained_and_renders_the_summary_tables(ablation_dir, capsys):  # noqa: F811
    regenerate(ablation_dir)
    summary_md = ablation_dir / "summary.md"
    # a row the summary has and this page must not recompute (e.g. another issue's baseline rows)
    summary_md.write_text(summary_md.read_text(encoding="utf-8").replace(
        "| ref |", "| all_negative (1 fold) | 12.34 ± 0.00 | n/a | n/a | n/a | n/a | n/a |\n| ref |", 1), encoding="utf-8")
    page = write_report(ablation_dir)
    text = page.read_text(encoding="utf-8")
    found = resources(page)
    assert "script" not in found.tags and "iframe" not in found.tags and "link" in found.tags
    assert all(url.startswith(("data:", "#")) for url in found.urls), [u[:40] for u in found.urls if
                                                                       not u.startswith(("data:", "#"))]
    images = [u for u in found.urls if u.startswith("data:image/png;base64,")]
    # reliability, binary + fine confusion, ROC/PR, per-label PR, timelines, and the run folder's own plots
    assert len(images) >= 6 + len(list((ablation_dir / "plots").glob("*.png")))
    assert "all_negative (1 fold)" in text and "12.34 ± 0.00" in text  # summary.md's rows, as written
    for needle in ("Caller-level paired bootstrap", "ECE", "Brier", "Per-call figures", "time to first alert",
                   "changes negative/not", "Most confused fine-label pairs", "config.yaml", "despair"):
        assert needle in text, needle
    summary = json.loads((ablation_dir / "summary.json").read_text())
    assert all(arm in text for arm in summary["arms"])


def test_report_command_writes_the_page_for_a_cv_folder(tmp_path, corpus, capsys):  # noqa: F811
    write_arm(tmp_path / "cv", corpus, noise=0.3)
    assert main(["report", str(tmp_path / "cv")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'cv' / 'report.html'}" in out
    text = (tmp_path / "cv" / "report.html").read_text(encoding="utf-8")
    assert "Mean ± std over folds" in text and 'alt="reliability diagram"' in text


def test_demo_writes_the_report_and_prints_its_path(tmp_path, corpus, monkeypatch):  # noqa: F811
    from ctxemo.studies import demo

    def fake_ablation(cfg, out_dir, **kwargs):  # the study's folder, as an ablation leaves it
        write_arm(Path(out_dir) / "isolated", corpus, noise=0.4)
        write_arm(Path(out_dir) / "contextual", corpus, noise=0.2, seed=3)
        return regenerate(Path(out_dir))

    monkeypatch.setattr(demo, "run_ablation", fake_ablation)
    monkeypatch.setattr(demo, "ensure_corpus", lambda *a, **k: tmp_path / "manifest.csv")
    lines = []
    demo.run_demo(tmp_path / "demo", log=lines.append)
    assert (tmp_path / "demo" / "report.html").is_file()
    assert any(str(tmp_path / "demo" / "report.html") in line for line in lines)


# ----------------------------------------------------------------------------- in a browser

def render(page: Path, tmp_path: Path) -> dict:
    """Open `page` in headless Chromium, served from a local HTTP server, and collect what went wrong:
    requests the server saw besides the page (or not answered 200), requests the page started (Chromium's
    net log) besides itself, and console messages about blocked or failed loads. Host resolution is
    mapped to nothing, so neither the page nor the browser's own services can reach the network."""
    seen = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            seen.append((self.path, int(code) if str(code).isdigit() else code))

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(page.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{page.name}"
    net_log = tmp_path / f"{page.stem}.netlog.json"
    try:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", f"--log-net-log={net_log}", "--virtual-time-budget=5000",
             "--dump-dom", url], capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    log = json.loads(net_log.read_text(encoding="utf-8"))
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    page_requests = [e["params"]["url"] for e in log["events"] if types[e["type"]] == "URL_REQUEST_START_JOB"
                     and "url" in e.get("params", {})
                     and e["params"].get("network_isolation_key", "").startswith("http://127.0.0.1")]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line and
               any(word in line for word in ("violates", "Refused", "Failed to load", "net::ERR"))]
    return {"dom": done.stdout, "server": seen, "page_requests": page_requests, "console": console,
            "failed": [r for r in seen if r != (f"/{page.name}", 200)] + [u for u in page_requests if u != url]
            + console}


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package "
                                    "`chromium`: apt-get install -y chromium; .ci/run installs it where apt works)")


@needs_chromium
def test_the_checker_sees_failed_and_blocked_requests(tmp_path):
    """The browser check can fail: a missing image and an outside host are caught, with or without the CSP."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><img src="missing.png">'
                   '<img src="http://example.invalid/x.png"></body></html>', encoding="utf-8")
    result = render(bad, tmp_path)
    assert ("/missing.png", 404) in result["server"]
    assert any("example.invalid" in u for u in result["page_requests"])
    from ctxemo.reports.html import CSP

    blocked = tmp_path / "blocked.html"
    blocked.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
                       '<link rel="icon" href="data:,"></head><body><img src="http://example.invalid/x.png">'
                       '</body></html>', encoding="utf-8")
    assert any("violates" in line for line in render(blocked, tmp_path)["console"])


@needs_chromium
def test_report_renders_in_chromium_with_no_failed_request(ablation_dir, tmp_path):  # noqa: F811
    regenerate(ablation_dir)
    page = write_report(ablation_dir)
    result = render(page, tmp_path)
    assert result["failed"] == [], result["failed"]
    assert result["server"] == [("/report.html", 200)]
    assert "<h1>ctxemo report" in result["dom"] and result["dom"].count("<img") >= 6
