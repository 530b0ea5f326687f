"""The public datasets of the study: where their archives live and how each is prepared.

Each module describes one source (:class:`Source`): the archives and their official base URL,
published checksums, which archive members are worth extracting, what the unpacked tree must
contain, and ``prepare(raw, params, out, name)`` which converts the unpacked tree into the
uniform prepared format (:mod:`segmia.data.prepared`).
"""

from __future__ import annotations

from ...errors import DataError
from .base import Archive, Source, not_hidden

__all__ = ["Archive", "Source", "get_source", "not_hidden"]


def get_source(name: str) -> Source:
    from . import cityscapes, kvasir, liver

    sources = {m.SOURCE.name: m.SOURCE for m in (liver, kvasir, cityscapes)}
    try:
        return sources[name]
    except KeyError:
        raise DataError(
            f"unknown dataset source {name!r}; known: {', '.join(sorted(sources))}."
        ) from None
