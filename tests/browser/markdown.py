"""What the page shows of an answer: its Markdown rendered the way static/markdown.js renders it,
as the text of the resulting elements (their ``textContent``).

markdown-it-py is the Python port of markdown-it, the renderer the page uses, configured here
the same way: no raw HTML, no images, links only to http, https and mailto. The page's extras
(copy buttons, alignment classes) add no text, so the texts agree exactly.
"""

from __future__ import annotations

import functools
import re
from html.parser import HTMLParser

from markdown_it import MarkdownIt

_SAFE_URL = re.compile(r"(?:https?|mailto):", re.IGNORECASE)

_markdown = (
    MarkdownIt("commonmark", {"html": False, "xhtmlOut": False, "typographer": False})
    .enable(["table", "strikethrough"])
    .disable("image")
)
_markdown.validateLink = lambda url: _SAFE_URL.match(url) is not None  # type: ignore[method-assign]


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def render_html(source: str) -> str:
    return _markdown.render(source)


@functools.lru_cache(maxsize=4096)
def rendered_text(source: str) -> str:
    """The text the page shows for an answer whose content is ``source``."""
    parser = _Text()
    parser.feed(render_html(source))
    parser.close()
    return "".join(parser.parts)
