"""One self-contained HTML page per visualisation: every PNG with its caption, and what made
them (the run, its model and data, the method and its settings).

The page needs nothing but itself: the images are embedded as base64 ``data:`` URIs, the CSS is
inline, there is no script, and its Content-Security-Policy forbids loading anything else (a
browser that met a reference to another file would block it and say so in its console). Text is
HTML-escaped. The file is written atomically.

>>> page = render_report("saliency of run lenet", [], {"model": "lenet5_modern"})
>>> page.startswith("<!DOCTYPE html>") and "lenet5_modern" in page
True
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.train.run import write_text

__all__ = ["INDEX", "POLICY", "Picture", "render_report", "write_report"]

INDEX = "index.html"
# nothing but the page itself: images from data: URIs, its own <style>; no scripts at all
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """\
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em;
       padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.4em; margin-bottom: 0.4em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { text-align: left; vertical-align: top; padding: 0.15em 1em 0.15em 0; }
th { font-weight: 600; white-space: nowrap; }
figure { margin: 0 0 2em 0; }
img { display: block; max-width: 100%; height: auto; image-rendering: pixelated;
      border: 1px solid #ddd; }
figcaption { margin-top: 0.4em; color: #444; }
"""


@dataclass(frozen=True)
class Picture:
    """A PNG shown on the page, and what it shows."""

    path: Path
    caption: str


def render_report(title: str, pictures: Sequence[Picture], facts: Mapping[str, object],
                  intro: str = "") -> str:
    """The page as text: ``title``, an ``intro`` paragraph, a table of ``facts`` (name ->
    value, e.g. the run, model, data, method, settings) and every picture with its caption."""
    e = html.escape
    rows = "\n".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>"
                     for k, v in facts.items())
    figures = "\n".join(_figure(p) for p in pictures)
    lead = f"<p>{e(intro)}</p>\n" if intro else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{e(title)}</title>\n<style>\n{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{e(title)}</h1>\n{lead}<table>\n{rows}\n</table>\n{figures}\n"
            f"</body>\n</html>\n")


def write_report(path: str | os.PathLike[str], title: str, pictures: Sequence[Picture],
                 facts: Mapping[str, object], intro: str = "") -> Path:
    """Write :func:`render_report`'s page to ``path`` (e.g. ``OUT/index.html``), atomically."""
    out = Path(path)
    write_text(out, render_report(title, pictures, facts, intro))
    return out


def _figure(picture: Picture) -> str:
    """A ``<figure>``: the PNG as a data URI at its own size, and its caption."""
    try:
        data = picture.path.read_bytes()
    except OSError as err:
        raise CnnlabError(f"cannot embed {str(picture.path)!r} in the page: "
                          f"{err.strerror or err}; draw the picture first") from None
    width, height = _png_size(data, picture.path)
    caption = html.escape(picture.caption)
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f"<figure>\n<img src=\"{uri}\" width=\"{width}\" height=\"{height}\" "
            f"alt=\"{caption}\">\n<figcaption>{caption}</figcaption>\n</figure>")


def _png_size(data: bytes, path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise CnnlabError(f"{str(path)!r} is not a PNG file; only PNGs are embedded")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
