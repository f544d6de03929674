"""What an optional part of the package needs: the error that says which extra to install."""

from __future__ import annotations

__all__ = ["needs_extra"]


def needs_extra(what: str, extra: str, note: str = "") -> ImportError:
    """The ``ImportError`` for ``what`` without extra ``extra``: it names the install command."""
    return ImportError(
        f"{what} needs the '{extra}' extra{note}: pip install 'crab-langchain[{extra}]' "
        f"(from a clone: pip install -e '.[{extra}]')"
    )
