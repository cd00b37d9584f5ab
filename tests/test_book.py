"""Build the smoke book and open every page in headless Chromium (smoke)."""

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest

from layerlab.book import build as book

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The smoke book, built from a copy of the book's sources so that the test never
    overwrites the quick book a user built with `make book`."""
    results_dir = tmp_path_factory.mktemp("book-results")
    root = tmp_path_factory.mktemp("book-root")
    for name in ("_config.yml", "_toc.yml", "book", "notebooks"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("executed", "_static"))
        else:
            shutil.copy(ROOT / name, root / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(book, "ROOT", root)
        mp.setattr(book, "BOOK", root / "book")
        mp.setattr(book, "EXECUTED", root / "book" / "executed")
        assert book.main(["--profile", "smoke", "--results-dir", str(results_dir)]) == 0
    return root / "_build" / "html"


def _pages(html: Path) -> list[Path]:
    pages = [p for p in html.rglob("*.html")
             if not p.name.startswith(("genindex", "search")) and "_static" not in p.relative_to(html).parts]
    assert pages
    return pages


@pytest.mark.smoke
def test_smoke_book_has_every_chapter_and_no_remote_scripts(built_book):
    for name in ("intro.html", "laser.html", "prune.html", "painters.html", "comparison.html", "reproducibility.html",
                 "executed/laser-smollm2-135m.html", "executed/prune-smollm2-135m.html",
                 "executed/painters-smollm2-135m.html"):
        assert (built_book / "book" / name).exists(), name
    for page in _pages(built_book):
        text = page.read_text(encoding="utf-8")
        remote = re.findall(r"<script[^>]+src=\"(https?:[^\"]+)\"", text)
        assert not remote, f"{page.name} loads remote scripts: {remote}"
        inline = [s for s in re.findall(r"<script[^>]*>(.*?)</script>", text, re.S) if re.search(r"https?://", s)]
        assert not inline, f"{page.name} has scripts that name remote URLs: {[s[:120] for s in inline]}"
    assert (built_book / "_static" / "vega-bundle.js").stat().st_size > 100_000


@pytest.mark.smoke
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it)")
def test_every_page_draws_its_charts_in_a_browser_without_console_errors(built_book):
    from playwright.sync_api import sync_playwright

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    problems = []
    charts_seen = 0
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            for page_path in _pages(built_book):
                rel = page_path.relative_to(built_book).as_posix()
                page = browser.new_page()
                errors = []
                page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.route(re.compile(r"^https?://(?!127\.0\.0\.1).*"), lambda route: route.abort())
                page.goto(f"{base}/{rel}", wait_until="load")
                page.wait_for_timeout(300)
                n_charts = page.locator(".layerlab-chart").count()
                if n_charts:
                    # vega-embed replaces the static SVG by its own interactive view
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('.layerlab-chart')].every("
                        "c => c.classList.contains('vega-embed') && c.querySelector('svg, canvas'))", timeout=30_000)
                    drawn = page.evaluate(
                        "() => [...document.querySelectorAll('.layerlab-chart')].map("
                        "c => { const g = c.querySelector('svg, canvas'); return g && (g.querySelectorAll('path, rect, line, text').length > 0 || g.width > 0); })")
                    if not all(drawn):
                        problems.append(f"{rel}: a chart did not draw")
                    charts_seen += n_charts
                if rel.startswith("book/executed/") and page.locator("table").count() == 0:
                    problems.append(f"{rel}: no table")
                if errors:
                    problems.append(f"{rel}: console errors {errors[:3]}")
                page.close()
            browser.close()
    finally:
        server.shutdown()
    assert not problems, "\n".join(problems)
    assert charts_seen >= 10
