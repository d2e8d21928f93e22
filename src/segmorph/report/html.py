"""Building blocks of a self-contained HTML page: escaped text, tables, images, slice viewers.

Every piece of text that goes into the page passes through :func:`esc` unless it is :class:`Markup`
(HTML this module built). The page loads nothing: CSS and JavaScript are inline and images are
``data:`` URIs, so one file can be mailed or archived and still shows everything.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple


class Markup(str):
    """A string of HTML that is already safe (built here); :func:`esc` passes it through unchanged."""


def esc(value: Any) -> Markup:
    """``value`` as HTML text: Markup unchanged, numbers formatted (:func:`fmt`), everything else escaped."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(fmt(value), quote=True))


def fmt(value: Any) -> str:
    """Display form of a value: floats to 4 significant digits, None as an en dash, lists joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) if all(not isinstance(v, (list, dict)) for v in value) else str(value)
    return str(value)


def join(parts: Iterable[str]) -> Markup:
    """Concatenate pieces of Markup (plain strings are escaped)."""
    return Markup("".join(esc(p) for p in parts))


def tag(name: str, content: Any = "", **attributes: Any) -> Markup:
    """``<name attr="...">content</name>``; attribute names use ``_`` for ``-`` and ``class_`` for ``class``."""
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"' for key, value in attributes.items() if value is not None
    )
    return Markup(f"<{name}{attrs}>{esc(content)}</{name}>")


def paragraph(text: Any, class_: str | None = None) -> Markup:
    return tag("p", text, class_=class_)


def note(text: str) -> Markup:
    """A muted remark, e.g. why a picture is missing."""
    return paragraph(text, class_="note")


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], class_: str | None = None) -> Markup:
    """A table with one header row; cells are escaped unless they are Markup."""
    head = tag("tr", join(tag("th", h) for h in header))
    body = join(tag("tr", join(tag("td", cell) for cell in row)) for row in rows)
    return tag("table", join([tag("thead", head), tag("tbody", body)]), class_=class_)


def facts_table(facts: Mapping[str, Any]) -> Markup:
    """Two columns, name and value, one row per entry (None values left out)."""
    return table(("setting", "value"), [(k, v) for k, v in facts.items() if v is not None], class_="facts")


def details(title: str, text: str) -> Markup:
    """A collapsed block holding preformatted text, e.g. a whole JSON file."""
    return tag("details", join([tag("summary", title), tag("pre", text)]))


def json_details(title: str, value: Any) -> Markup:
    return details(title, json.dumps(value, indent=2, default=str))


def image(uri: str, alt: str, width: int | None = None, height: int | None = None, class_: str | None = None) -> Markup:
    """An ``<img>`` showing a data URI."""
    return Markup(
        f'<img src="{esc(uri)}" alt="{esc(alt)}"'
        + (f' width="{int(width)}"' if width else "")
        + (f' height="{int(height)}"' if height else "")
        + (f' class="{esc(class_)}"' if class_ else "")
        + ">"
    )


def figure(uri: str, caption: str) -> Markup:
    """A picture with its caption (for PNGs drawn by matplotlib)."""
    return tag("figure", join([image(uri, caption, class_="plot"), tag("figcaption", caption)]))


class Section(NamedTuple):
    """One section of a page: its anchor (``#anchor``), title and body; narrow ones sit side by side."""

    anchor: str
    title: str
    body: Markup
    narrow: bool = False


def section(part: Section) -> Markup:
    """A titled ``<section>`` of the page."""
    return tag("section", join([tag("h2", part.title), part.body]), id=part.anchor,
               class_="narrow" if part.narrow else None)  # fmt: skip


@dataclass(frozen=True)
class Panel:
    """One picture of a slice viewer: a background series and, drawn over it, an optional layer series."""

    caption: str
    background: str
    layer: str | None = None


@dataclass(frozen=True)
class SliceStack:
    """Panels that share a slice index, shown side by side with one slider.

    Attributes:
        slice_numbers: The array index along the sliced axis of each shown slice.
        series: Name -> one picture URI per entry of ``slice_numbers`` (backgrounds and transparent layers);
            panels share series, so a scan shown under three overlays is stored once.
        panels: The pictures shown side by side.
        start: Position (into ``slice_numbers``) shown first.
        width: Displayed width of each picture in CSS pixels.
        height: Displayed height in CSS pixels (the voxel spacing's aspect).
        axis: Name of the sliced array axis, e.g. ``"K"`` ("" for 2D images).
    """

    slice_numbers: Sequence[int]
    series: Mapping[str, Sequence[str]]
    panels: Sequence[Panel]
    start: int
    width: int
    height: int
    axis: str = "K"


def _slice_image(stack: SliceStack, series: str, alt: str, class_: str) -> Markup:
    return Markup(
        f'<img src="{esc(stack.series[series][stack.start])}" alt="{esc(alt)}" width="{stack.width}" '
        f'height="{stack.height}" class="{class_}" data-series="{esc(series)}">'
    )


def slice_viewer(anchor: str, stack: SliceStack) -> Markup:
    """Panels side by side; with more than one slice, a range slider that swaps every panel's images.

    The URIs live in a ``<script type="application/json">`` block that the page script reads; the slider
    (``input`` events) sets the ``src`` of each ``img[data-series]`` and the shown slice number.
    """
    cells = []
    for panel in stack.panels:
        pictures = [_slice_image(stack, panel.background, panel.caption, "slice")]
        if panel.layer is not None:
            pictures.append(_slice_image(stack, panel.layer, f"{panel.caption} overlay", "slice layer"))
        stacked = tag("div", join(pictures), class_="stack")
        cells.append(tag("figure", join([stacked, tag("figcaption", panel.caption)])))
    parts = [tag("div", join(cells), class_="panels")]
    number = stack.slice_numbers[stack.start]
    if len(stack.slice_numbers) < 2:
        if stack.axis:
            parts.append(paragraph(f"slice {stack.axis} = {number}", class_="note"))
        return tag("div", join(parts), class_="viewer")
    data_id = f"{anchor}-slices"
    parts.append(Markup(
        f'<div class="slider"><label>slice {esc(stack.axis)} = <span class="slice-number">{number}</span> '
        f'<input type="range" min="0" max="{len(stack.slice_numbers) - 1}" value="{stack.start}" step="1" '
        f'aria-label="slice"></label> <span class="note">({len(stack.slice_numbers)} slices)</span></div>'
    ))  # fmt: skip
    parts.append(json_script(data_id, {"slices": list(stack.slice_numbers),
                                       "series": {k: list(v) for k, v in stack.series.items()}}))  # fmt: skip
    return tag("div", join(parts), class_="viewer", data_slices=data_id)


def json_script(element_id: str, value: Any) -> Markup:
    """Data for the page script; ``</`` is escaped so the JSON cannot end the script element."""
    text = json.dumps(value, separators=(",", ":")).replace("</", "<\\/")
    return Markup(f'<script type="application/json" id="{esc(element_id)}">{text}</script>')


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1f2d3d;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9d3df;font-size:13px}
nav{padding:8px 24px;background:#e9edf2;font-size:13px}nav a{margin-right:14px;color:#1f4e8c}
main{padding:8px 24px 40px;max-width:1800px;display:flex;flex-wrap:wrap;gap:14px;margin-top:14px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px 16px;flex:1 1 100%;min-width:0;
overflow-x:auto;box-sizing:border-box}
section.narrow{flex:1 1 380px}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde2e8;padding:3px 8px;text-align:right;white-space:nowrap;vertical-align:top}
td small{color:#6a7383}
th{background:#eef1f5}td:first-child,th:first-child{text-align:left}
table.facts th{text-align:left}table.facts td{text-align:left}
table.facts td+td{white-space:normal;max-width:900px;overflow-wrap:anywhere}
tr.worst td{background:#fff4f2}
details{margin:8px 0}summary{cursor:pointer;color:#1f4e8c}
pre{background:#f3f5f8;padding:8px;font-size:12px;max-height:480px;overflow:auto}
figure{display:inline-block;margin:4px 10px 4px 0;vertical-align:top;text-align:center}
figcaption{font-size:12px;color:#4a5566}
img.plot{max-width:100%;height:auto;border:1px solid #eee}
img.slice{image-rendering:pixelated;display:block}
.stack{position:relative;display:inline-block;background:#000}.stack img.layer{position:absolute;left:0;top:0}
img.thumb{image-rendering:auto;background:#000}
.panels{display:flex;flex-wrap:wrap;gap:4px}
.slider{font-size:13px;margin:4px 0}.slider input{width:320px;vertical-align:middle}
.note{color:#6a7383;font-size:12px}
.columns{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.cards figure{width:180px}.cards figcaption{text-align:left;overflow-wrap:anywhere}
.case{border-top:1px solid #e3e7ec;padding-top:6px;margin-top:8px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
"""

SCRIPT = """
document.querySelectorAll('.viewer[data-slices]').forEach(function (viewer) {
  var data = JSON.parse(document.getElementById(viewer.dataset.slices).textContent);
  var slider = viewer.querySelector('input[type=range]');
  var number = viewer.querySelector('.slice-number');
  var images = viewer.querySelectorAll('img[data-series]');
  slider.addEventListener('input', function () {
    var position = Number(slider.value);
    images.forEach(function (img) { img.src = data.series[img.dataset.series][position]; });
    number.textContent = String(data.slices[position]);
  });
});
"""


def page(title: str, subtitle: str, sections: Sequence[Section], made_by: str = "segmorph report") -> str:
    """The whole document: header, a link per section, the sections, the slider script.

    Args:
        title: Page title.
        subtitle: One line under the title (what folder, what kind of run).
        sections: The sections, bodies built with this module.
        made_by: The command named in the header line.
    """
    links = join(tag("a", part.title, href=f"#{part.anchor}") for part in sections)
    generated = f"{subtitle} · generated {time.strftime('%Y-%m-%d %H:%M:%S')} by {made_by}"
    body = join([
        tag("header", join([tag("h1", title), paragraph(generated)])),
        tag("nav", links),
        tag("main", join(section(part) for part in sections)),
    ])  # fmt: skip
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body>{body}<script>{SCRIPT}</script></body></html>\n"
    )
