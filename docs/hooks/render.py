"""MkDocs hook: the built pages render the same without network.

- Formulas become MathML at build time, which browsers render natively (no MathJax, no CDN): ``$...$``
  and ``$$...$$`` in the markdown are marked by ``pymdownx.arithmatex`` (generic mode) and each is
  converted here with ``latex2mathml``. A formula it cannot convert (an unknown command comes back as
  ``\\name``) fails the build, so no raw TeX reaches a page.
- Inline code does not break at its hyphens: browsers may wrap a line after any ``-`` (Unicode line
  breaking), and Material lets inline code wrap, so ``--text-column`` could show as ``--text-`` /
  ``column``. Each whitespace-free run of inline code that holds a hyphen and is at most
  ``NOBR_MAX`` characters long is wrapped in ``<span class="md-nobr">`` (``white-space: nowrap`` in
  ``docs/stylesheets/extra.css``); the text, and so copying it, is unchanged, and long commands still
  wrap at their spaces.
"""

from __future__ import annotations

import html
import re

from mkdocs.exceptions import PluginError

INLINE_MATH = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
BLOCK_MATH = re.compile(r'<div class="arithmatex">\s*\\\[(.*?)\\\]\s*</div>', re.S)
PRE = re.compile(r"<pre\b.*?</pre>", re.S)  # code blocks keep their text as it is
INLINE_CODE = re.compile(r"(<code>)([^<]*)(</code>)")  # inline code without markup inside
# commands latex2mathml does not know, as equivalents it does
TEX_REWRITES = {"arg": r"\operatorname{arg}"}
TEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
NOBR_MAX = 40  # longer runs (paths, URLs) may still break, rather than overflow a narrow screen


def to_mathml(tex: str, display: str, where: str) -> str:
    from latex2mathml.converter import convert

    tex = TEX_COMMAND.sub(lambda m: TEX_REWRITES.get(m.group(1), m.group(0)), tex)
    try:
        mathml = convert(tex.strip(), display=display)
    except Exception as e:  # latex2mathml raises its own errors and plain ones on malformed input
        raise PluginError(f"{where}: cannot convert the formula {tex.strip()!r} to MathML ({e})") from e
    if "\\" in mathml:  # an unknown command is kept as text, e.g. <mi>\foo</mi>
        raise PluginError(f"{where}: the formula {tex.strip()!r} has a command latex2mathml does not know")
    return mathml


def render_math(content: str, where: str) -> str:
    def inline(m):
        return '<span class="arithmatex">' + to_mathml(html.unescape(m.group(1)), "inline", where) + "</span>"

    def block(m):
        return '<div class="arithmatex">' + to_mathml(html.unescape(m.group(1)), "block", where) + "</div>"

    content = BLOCK_MATH.sub(block, INLINE_MATH.sub(inline, content))
    if re.search(r'class="arithmatex">\s*\\[(\[]', content):
        raise PluginError(f"{where}: a formula was left as TeX (markup the hook does not know)")
    return content


def _nobr(m) -> str:
    run = m.group(0)
    if "-" in run and len(html.unescape(run)) <= NOBR_MAX:
        return f'<span class="md-nobr">{run}</span>'
    return run


def keep_hyphens(content: str) -> str:
    def code(m):
        return m.group(1) + re.sub(r"\S+", _nobr, m.group(2)) + m.group(3)

    parts = []
    last = 0
    for pre in PRE.finditer(content):
        parts.append(INLINE_CODE.sub(code, content[last : pre.start()]))
        parts.append(pre.group(0))
        last = pre.end()
    parts.append(INLINE_CODE.sub(code, content[last:]))
    return "".join(parts)


def on_page_content(html_text, page, config, files, **kwargs):
    return keep_hyphens(render_math(html_text, page.file.src_path))
