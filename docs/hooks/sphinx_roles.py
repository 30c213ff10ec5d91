"""mkdocs hook: show the docstrings' Sphinx roles (:func:`x`, :class:`~a.b.C`) as plain code.

The docstrings are numpydoc and cross-reference with Sphinx roles; mkdocstrings renders the role
name as text before the code span. This hook drops the role name (and the ``~`` that Sphinx uses
to shorten a path to its last part), so the reference reads as the code span it is.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):<code>(~)?([^<]*)</code>")


def _plain(match: re.Match) -> str:
    shorten, target = match.group(1), match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if shorten else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    """Rewrite every rendered role on a page into its code span."""
    return ROLE.sub(_plain, html)
