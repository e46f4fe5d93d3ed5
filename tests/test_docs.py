"""The documentation site as built: it renders without network and states what the code says.

One ``mkdocs build --strict`` into a temporary folder (several seconds, hence slow), then static checks
of its HTML: formulas are MathML (no TeX delimiters left for a script to render), no page loads a
script, stylesheet or font from another host, inline code keeps ``--layers`` whole, and the generated
parts (dependency bounds, measure counts) agree with pyproject.toml and the measure registry. Where a
chromium is already installed, it also renders the Concepts page with name resolution disabled and
checks that the formulas take up space; CI does not need one.
"""

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_collapse.core.registry import MEASURES

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

pytest.importorskip("mkdocs")
pytest.importorskip("latex2mathml")
from packaging.requirements import Requirement  # noqa: E402  (mkdocs requires packaging)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

EXTERNAL = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""", re.I)
CDN_HOSTS = ("cdn.jsdelivr", "unpkg.com", "polyfill.io", "cdnjs.cloudflare", "fonts.googleapis", "fonts.gstatic")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def pages(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}


def prose(page: str) -> str:
    """The page without code blocks, inline code, scripts and styles (TeX delimiters may appear in code)."""
    for tag in ("pre", "code", "script", "style"):
        page = re.sub(rf"<{tag}\b.*?</{tag}>", "", page, flags=re.S)
    return page


def text(page: str) -> str:
    """The page's text outside code blocks, inline code included."""
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<pre\b.*?</pre>", "", page, flags=re.S)))


def test_formulas_are_mathml(site):
    built = pages(site)
    assert "concepts/index.html" in built
    for name, page in built.items():
        body = prose(page)
        for delimiter in ("\\(", "\\)", "\\[", "\\]", "$$"):
            assert delimiter not in body, f"{name}: TeX delimiter {delimiter!r} left unrendered"
        assert 'class="arithmatex">\\' not in page, name
    concepts = built["concepts/index.html"]
    assert concepts.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline"') > 10
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block"' in concepts
    assert "&#x1D53C;" in concepts  # \mathbb{E} as the character, which browsers draw without mathvariant
    scripts = "".join(re.findall(r"<script\b[^>]*>", "".join(built.values())))
    assert "mathjax" not in scripts.lower() and not (site / "javascripts").exists()


def test_no_page_loads_from_another_host(site):
    for name, page in pages(site).items():
        assert not EXTERNAL.search(page), f"{name} loads {EXTERNAL.search(page).group(0)!r}"
        for host in CDN_HOSTS:
            assert host not in page, f"{name} references {host}"


def test_inline_code_keeps_its_hyphens(site):
    built = pages(site)
    measuring = built["measuring/index.html"]
    # the flag is one unbreakable run inside its code element, with no dash or break substituted
    assert re.search(r'<code><span class="md-nobr">--layers</span></code>', measuring)
    for name, page in built.items():
        for code in re.findall(r"<code>(.*?)</code>", re.sub(r"<pre\b.*?</pre>", "", page, flags=re.S), re.S):
            inner = html.unescape(re.sub(r"<[^>]+>", "", code))
            assert "\u2013" not in inner and "\u2014" not in inner and "<br" not in code, f"{name}: {code!r}"
            if "<" not in code:  # no markup at all: a run with a hyphen would have been wrapped
                assert not any("-" in run and len(run) <= 40 for run in inner.split()), f"{name}: {code!r}"
    css = (REPO / "docs" / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"\.md-nobr\s*\{\s*white-space:\s*nowrap", css)


def test_dependencies_come_from_pyproject(site):
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    raw = pages(site)["installation/index.html"]
    page = text(raw)
    assert "transformers >= 4.40" not in page  # the hand-written list this replaced
    cells = re.findall(r"<tr>\s*<td>(.*?)</td>\s*<td>(.*?)</td>\s*</tr>", raw, flags=re.S)
    rows = {html.unescape(re.sub(r"<[^>]+>", "", a)): html.unescape(b) for a, b in cells}
    assert rows.get("Python") == project["requires-python"].replace(">=", ">= ")
    for spec in project["dependencies"]:
        req = Requirement(spec)
        assert req.name in rows, f"{req.name} missing from the installation page"
        for s in req.specifier:
            assert f"{s.operator} {s.version}" in rows[req.name], (req.name, rows[req.name])
    for extra, reqs in project["optional-dependencies"].items():
        line = next(line for line in page.splitlines() if line.strip().startswith(f"{extra}:"))
        for spec in reqs:
            assert Requirement(spec).name in line, (extra, spec)


def test_measure_counts_match_the_registry(site):
    for name, page in pages(site).items():
        for n in re.findall(r"(?<![\w.])(\d+) (?:collapse )?measures\b", text(page)):
            assert int(n) == len(MEASURES), f"{name} says {n} measures; the registry has {len(MEASURES)}"


PROBE = """<script>
window.addEventListener('load', () => {
  const math = [...document.querySelectorAll('math')];
  const drawn = math.filter(m => { const r = m.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
  const split = [...document.querySelectorAll('.md-nobr')].filter(s => s.getClientRects().length > 1);
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = JSON.stringify({math: math.length, drawn: drawn.length, split: split.map(s => s.textContent)});
  document.body.appendChild(p);
});
</script>"""


def test_renders_offline_in_a_browser(site, tmp_path):
    """Only where a chromium is installed (not in CI): the Concepts page with every host unresolvable."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium installed; the static checks above cover the HTML")
    page = site / "concepts" / "probe.html"
    page.write_text((site / "concepts" / "index.html").read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no name resolves
        "--window-size=700,1200",
        "--virtual-time-budget=5000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe did not run"
    probe = json.loads(html.unescape(m.group(1)))
    assert probe["math"] > 10 and probe["drawn"] == probe["math"], probe
    assert probe["split"] == [], probe
    shot = tmp_path / "concepts.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
