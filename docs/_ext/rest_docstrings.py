"""A griffe extension: the docstrings' reStructuredText markup, rendered as Markdown.

The package's docstrings follow SQLAlchemy's style (``:func:`name```, ``.. note::``, ``::``
before a literal block) while mkdocstrings renders docstrings as Markdown: roles become code
spans, notes admonitions, and a literal block's ``::`` a colon.
"""

from __future__ import annotations

import re
import typing as t

import griffe

_ROLE = re.compile(r":(?:func|meth|class|attr|data|mod|exc|obj):`(~?)([^`]+)`")
_DIRECTIVE = re.compile(r"^\.\. (note|warning|seealso)::\s*(.*)$")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rpartition('.')[2] if match.group(1) else target}`"


def to_markdown(text: str) -> str:
    """Return ``text`` with its reStructuredText markup turned into Markdown."""
    lines: list[str] = []
    in_directive = False
    for line in text.splitlines():
        directive = _DIRECTIVE.match(line)
        if directive:
            kind = directive.group(1)
            lines.append(f"!!! {'info' if kind == 'seealso' else kind}")
            lines.append(f"    {directive.group(2)}")
            in_directive = True
            continue
        if in_directive and line.strip():
            # reST indents a directive's body by three spaces, Markdown an admonition's by four.
            line = f"    {line.strip()}"
        else:
            in_directive = False
        if line.endswith("::"):
            line = line[:-1]
        lines.append(line)
    return _ROLE.sub(_role, "\n".join(lines))


class RestDocstrings(griffe.Extension):
    """Convert every docstring that griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: t.Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
