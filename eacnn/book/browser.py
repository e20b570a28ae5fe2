"""Open the rendered book in a real browser (headless Chromium via Playwright) and check what readers see.

For every page of the book: each image has loaded (``naturalWidth > 0``), no executed cell shows an error or a
traceback, no glued value is missing, every internal link (and its ``#anchor``) resolves, the math is typeset
(no raw ``\\(`` or ``$$`` left in the prose) by a MathJax served with the book (no script from another host), no
output shows a library's stdout or warning lines (:data:`JUNK`) or a NumPy scalar echo (``np.float64(``), nothing
stray reaches prose or outputs (:data:`STRAY`: reprs, pandas footers, raw roles or LaTeX), no table is wider than its
column (hidden columns), no launch button's URL holds ``/./``, every figure in a cell's output has a numbered
caption, and
no page shows two parameters cells (papermill's injected one beside the notebook's own). Screenshots of chosen
pages are saved, at each width asked for. Used by the tests and by ``.ci/run``; needs Debian's ``chromium`` (no
browser download).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

from eacnn.errors import BookError

__all__ = ["find_chromium", "check_book", "BrowserReport"]

_CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

#: Lines of library chatter that must not reach a page's outputs (stdout of imports, warnings, progress bars).
JUNK = [
    r"cuequivariance", r"\b\w*Warning:", r"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", r"torch\.jit", r"^\s*warnings\.warn",
    r"^(WARNING|INFO|DEBUG)[:\s]", r"\d+%\|[^|]*\|\s*\d+/\d+", r"\[\d\d:\d\d<",
]
#: NumPy scalars echoed as reprs instead of numbers (a glue or an expression ending a cell).
NUMPY_ECHO = r"\bnp\.(float|int|uint|bool|str|complex)\w*\("
#: What a reader should never see in prose or outputs: an object's repr (``XRDConfig(...)``), pandas' footer of
#: a printed Series ("Name: …, dtype: object"), a Sphinx role or LaTeX left raw outside math, a cache-key log line.
STRAY = [
    (r"\b[A-Z]\w*Config\(\w+=", "an object's repr"), (r"\bdtype: \w+", "a pandas dtype footer"),
    (r"(^|\n)Name: [^\n]*", "a pandas Series name footer"), (r":(mod|func|class|data|meth|attr):`?", "a raw Sphinx role"),
    (r"\$[_^]\{?\w+\}?\$", "raw LaTeX outside math"), (r"\bcache key\b|\bkey=[0-9a-f]{12}", "a cache-key log line"),
]

# Runs in the page: what a reader would notice is broken. Waits for MathJax to finish typesetting (if the page has
# math), then reads the prose with code cells' inputs taken out (code may contain anything).
_PAGE_PROBE = r"""async ([junk, numpyEcho, stray]) => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await Promise.race([MathJax.startup.promise, new Promise(r => setTimeout(r, 15000))]);
  }
  const imgs = [...document.querySelectorAll('main img, article img, .bd-article img')];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const errors = [...document.querySelectorAll('.output.error, .output.traceback, div.cell_output .output.stderr')]
      .map(e => e.innerText.slice(0, 200)).filter(t => /Error|Traceback/.test(t));
  const text = document.body.innerText;
  const missingGlue = /glue key .* not found|Could not find glue/i.test(text);
  const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const root = document.querySelector('main') || document.body;
  const prose = root.cloneNode(true);
  prose.querySelectorAll('.cell_input, pre, code, script, style, mjx-container, .MathJax').forEach(e => e.remove());
  const proseText = prose.textContent;
  const rawMath = (proseText.match(/\\\(|\\\[|\$\$|\\begin\{/g) || []).slice(0, 3);
  const outputs = [...document.querySelectorAll('.cell_output')].map(e => e.innerText);
  const junkLines = [];
  for (const out of outputs) {
    for (const line of out.split('\n')) {
      if (junk.some(p => new RegExp(p).test(line))) junkLines.push(line.slice(0, 120));
    }
  }
  const echoes = ([proseText, ...outputs].join('\n').match(new RegExp(numpyEcho + '[^)]*\\)', 'g')) || [])
      .slice(0, 3);
  const paramCells = document.querySelectorAll('.tag_parameters, .tag_injected-parameters').length;
  const injected = document.querySelectorAll('.tag_injected-parameters').length;
  const smokeCells = [...document.querySelectorAll('.cell_input')]
      .filter(e => /^\s*smoke\s*=/m.test(e.innerText)).length;
  const external = [...document.querySelectorAll('script[src]')].map(e => e.getAttribute('src'))
      .filter(src => /^(https?:)?\/\//.test(src) && !src.includes(location.host));
  const strays = [];
  const visible = [proseText, ...outputs].join('\n');
  for (const [pattern, what] of stray) {
    const m = visible.match(new RegExp(pattern, 'm'));
    if (m) strays.push(what + ': ' + JSON.stringify(m[0].trim().slice(0, 60)));
  }
  // a table wider than the column it sits in hides columns behind a scroll bar
  const wide = [...root.querySelectorAll('table')].map(t => {
    const box = (t.closest('.cell_output, .output, figure, .table-wrapper, .pasted-inline, p, div') || root);
    const column = (document.querySelector('.bd-article') || root).clientWidth;
    return {width: t.scrollWidth, column: Math.min(column, box.clientWidth || column),
            head: (t.querySelector('tr') || t).innerText.replace(/\s+/g, ' ').slice(0, 60)};
  }).filter(t => t.width > t.column + 2).map(t => `${t.width} px in a ${t.column} px column: ${t.head}`);
  // a figure a reader is meant to look at carries a number and a caption (a figure element with its figcaption)
  const uncaptioned = [...root.querySelectorAll('.cell_output img')]
      .filter(i => !(i.closest('figure') && i.closest('figure').querySelector('figcaption')))
      .map(i => (i.getAttribute('alt') || i.getAttribute('src') || '').slice(0, 60));
  const launch = links.filter(h => /colab\.research|mybinder|\/blob\//.test(h) && /\/\.\//.test(h));
  return {n_images: imgs.length, broken, errors, missingGlue, links, title: document.title, rawMath,
          junkLines, echoes, paramCells: Math.max(paramCells, smokeCells), injected, external, strays, wide, launch,
          uncaptioned};
}"""


def find_chromium() -> str | None:
    """Path of a Chromium executable (Debian's ``chromium``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class BrowserReport:
    pages: list = field(default_factory=list)  # page path -> number of images
    problems: list = field(default_factory=list)  # human-readable findings; empty = all good
    screenshots: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # the browser hanging up early (favicon) is not news
        pass


#: CSS pixels of a phone's screen: every page must fit it without scrolling sideways
PHONE_WIDTH = 400


def check_book(html_dir: Path, pages: list[str], screenshot_dir: Path | None = None,
               screenshot_pages: tuple[str, ...] = (), screenshot_widths: tuple[int, ...] = (1280,),
               phone_width: int | None = PHONE_WIDTH) -> BrowserReport:
    """Serve ``html_dir`` on localhost, open each page of ``pages`` (paths relative to it) in headless Chromium.

    Besides the probes at 1280 px, each page is laid out at ``phone_width`` (None: not) and fails when it is wider
    than that screen (an unbreakable path or command, a wide figure: the reader would scroll sideways to read it).

    Pages whose path contains one of ``screenshot_pages`` are saved as full-page screenshots in ``screenshot_dir``,
    once per width of ``screenshot_widths`` (CSS pixels): ``<page>.png`` at the first, ``<page>-<width>px.png`` at
    the others (e.g. 400 for a phone).

    Raises:
        BookError: no Chromium or Playwright available.
    """
    chromium = find_chromium()
    if chromium is None:
        raise BookError("no Chromium found: install Debian's `chromium` (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise BookError("the browser check needs playwright: pip install -e '.[test]'") from err

    html_dir = Path(html_dir)
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    report = BrowserReport()
    checked_anchors: dict[str, set] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=_CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for rel in pages:
                url = urljoin(base, rel)
                resp = page.goto(url, wait_until="load")
                if resp is None or resp.status != 200:
                    report.problems.append(f"{rel}: HTTP {resp.status if resp else 'no response'}")
                    continue
                page.wait_for_load_state("networkidle")  # index.html redirects to the root page
                url = page.url.split("#")[0]
                probe = page.evaluate(_PAGE_PROBE, [JUNK, NUMPY_ECHO, STRAY])
                report.pages.append((rel, probe["n_images"]))
                report.problems += [f"{rel}: broken image {src}" for src in probe["broken"]]
                report.problems += [f"{rel}: error output: {e}" for e in probe["errors"]]
                if probe["missingGlue"]:
                    report.problems.append(f"{rel}: a glued value is missing")
                report.problems += [f"{rel}: raw math {m!r} (MathJax did not typeset it)" for m in probe["rawMath"]]
                report.problems += [f"{rel}: library output on the page: {line!r}" for line in probe["junkLines"]]
                report.problems += [f"{rel}: NumPy scalar echoed: {e!r}" for e in probe["echoes"]]
                if probe["paramCells"] > 1 or probe["injected"]:
                    report.problems.append(f"{rel}: duplicate parameters cells ({probe['paramCells']}, "
                                           f"{probe['injected']} injected by papermill shown)")
                report.problems += [f"{rel}: script from another host {src} (the page needs the network)"
                                    for src in probe["external"]]
                report.problems += [f"{rel}: stray output, {what}" for what in probe["strays"]]
                report.problems += [f"{rel}: wide table, {what}" for what in probe["wide"]]
                report.problems += [f"{rel}: launch link with '/./' {href}" for href in probe["launch"]]
                report.problems += [f"{rel}: figure without a caption {src}" for src in probe["uncaptioned"]]
                if phone_width:
                    page.set_viewport_size({"width": phone_width, "height": 900})
                    page.wait_for_timeout(150)  # let the theme re-lay the page out
                    wide = page.evaluate("() => document.documentElement.scrollWidth")
                    if wide > phone_width + 1:
                        report.problems.append(f"{rel}: wider than a {phone_width} px screen ({wide} px)")
                    page.set_viewport_size({"width": 1280, "height": 900})
                checked_anchors[url] = set(page.evaluate("() => [...document.querySelectorAll('[id]')].map(e => e.id)"))
                for href in probe["links"]:
                    target, anchor = urldefrag(urljoin(url, href))
                    if urlparse(target).netloc != urlparse(base).netloc:
                        continue  # external links are not followed (offline)
                    path = html_dir / urlparse(target).path.lstrip("/")
                    if path.is_dir():
                        path = path / "index.html"
                    if not path.is_file():
                        report.problems.append(f"{rel}: dead link {href}")
                    elif anchor and target == url and anchor not in checked_anchors[url]:
                        report.problems.append(f"{rel}: dead anchor #{anchor}")
                if screenshot_dir is not None and any(s in rel for s in screenshot_pages):
                    for k, width in enumerate(screenshot_widths):
                        name = Path(rel).stem + (".png" if k == 0 else f"-{width}px.png")
                        shot = Path(screenshot_dir) / name
                        shot.parent.mkdir(parents=True, exist_ok=True)
                        page.set_viewport_size({"width": width, "height": 900})
                        page.wait_for_timeout(300)  # let the theme re-lay the page out
                        page.screenshot(path=str(shot), full_page=True)
                        report.screenshots.append(shot)
                    page.set_viewport_size({"width": 1280, "height": 900})
            browser.close()
    finally:
        server.shutdown()
    return report
