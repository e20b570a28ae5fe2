"""A small Sphinx extension for the book (listed in ``_config.yml`` under ``sphinx.extra_extensions``):

* **math offline**: MathJax 3 is served from the book's own ``_static/mathjax`` (copied from the
  ``sphinx-mathjax-offline`` wheel, which vendors it), so pages render their formulas with no CDN at read time;
* **author–year labels**: the bibliography lists every entry under the label its citations show in the text
  ("Zhang et al., 2025a"), with a letter where one author list has two entries in a year (preprint and journal);
* **no launch button** on pages listed in ``eacnn_no_launch_buttons`` (e.g. the run-times page, which only reports
  the build that produced it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["setup", "mathjax_source", "AuthorYearLabelStyle"]

#: MathJax's entry file, relative to ``_static``.
MATHJAX_ENTRY = "mathjax/tex-chtml.js"
#: Parts of the vendored MathJax the pages need: TeX input with its extensions, HTML output with its fonts, the
#: menu and the accessibility tools it loads on demand. The other combined builds (SVG, MathML input) are skipped.
_MATHJAX_PARTS = ("tex-chtml.js", "a11y", "adaptors", "input/tex", "input/tex.js", "output/chtml",
                  "output/chtml.js", "ui", "sre")


def mathjax_source() -> Path | None:
    """The folder of the MathJax 3 distribution vendored by the ``sphinx-mathjax-offline`` package, or None."""
    import importlib.util

    spec = importlib.util.find_spec("sphinx-mathjax-offline")  # the package's import name has hyphens
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"
    return folder if (folder / "tex-chtml.js").is_file() else None


def _use_local_mathjax(app, config) -> None:
    if mathjax_source() is None:
        from sphinx.errors import ExtensionError

        raise ExtensionError("no local MathJax: pip install sphinx-mathjax-offline (in eacnn's [book] extra)")
    config.mathjax_path = MATHJAX_ENTRY


def _copy_mathjax(app, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    src, dst = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for part in _MATHJAX_PARTS:
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, dirs_exist_ok=True)
        elif (src / part).is_file():
            (dst / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dst / part)


def _drop_launch_buttons(app, pagename, templatename, context, doctree) -> None:
    """Runs after sphinx-book-theme added its launch buttons (priority 501)."""
    if pagename in app.config.eacnn_no_launch_buttons and "header_buttons" in context:
        context["header_buttons"] = [b for b in context["header_buttons"]
                                     if b.get("label") not in ("launch-buttons", "launch-thebe")]


def _author_year_styles():
    """pybtex styles giving each entry the label "Author, year" / "A and B, year" / "A et al., year"."""
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle
    from pybtex.style.sorting.author_year_title import SortingStyle

    class AuthorYearLabelStyle(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            labels = [self._label(entry) for entry in sorted_entries]
            counts: dict[str, int] = {}
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
            seen: dict[str, int] = {}
            for label in labels:
                if counts[label] == 1:
                    yield label
                else:  # the same authors twice in a year: 2025a, 2025b in sorted (here: chronological) order
                    seen[label] = seen.get(label, 0) + 1
                    yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]

        @staticmethod
        def _label(entry) -> str:
            persons = entry.persons.get("author") or entry.persons.get("editor") or []
            # rich names render TeX accents as letters: Morh{\'a}{\v{c}} -> Morháč
            names = [" ".join(t.render_as("text") for t in (p.rich_prelast_names + p.rich_last_names
                                                            or p.rich_first_names)) for p in persons]
            if not names:
                who = entry.fields.get("organization", entry.fields.get("title", "?")).strip("{}")
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            return f"{who}, {entry.fields.get('year', 'n.d.')}"

    class AuthorYearStyle(UnsrtStyle):
        default_label_style = "eacnn_authoryear"
        default_sorting_style = "eacnn_author_year"

    class ChronologicalSorting(SortingStyle):
        """By first author, then year, then month (a preprint before its journal version), then title."""

        def sorting_key(self, entry):
            key = super().sorting_key(entry)
            month = entry.fields.get("month", "").strip().lower()[:3]
            return key[0], key[1], f"{_MONTHS.index(month) if month in _MONTHS else 12:02d}", key[2]

    return AuthorYearLabelStyle, AuthorYearStyle, ChronologicalSorting


_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
AuthorYearLabelStyle = None  # set by _register_bibliography_styles (pybtex is imported only under Sphinx)


def _register_bibliography_styles() -> None:
    global AuthorYearLabelStyle
    from pybtex.plugin import register_plugin

    labels, formatting, sorting = _author_year_styles()
    AuthorYearLabelStyle = labels
    for group, name, cls in [("pybtex.style.labels", "eacnn_authoryear", labels),
                             ("pybtex.style.formatting", "eacnn", formatting),
                             ("pybtex.style.sorting", "eacnn_author_year", sorting)]:
        register_plugin(group, name, cls, force=True)  # force: a second build in one process registers again


def setup(app):
    _register_bibliography_styles()
    app.add_config_value("eacnn_no_launch_buttons", [], "html")
    app.connect("config-inited", _use_local_mathjax)
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _drop_launch_buttons, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
