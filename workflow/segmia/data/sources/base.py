"""What every dataset source declares (:class:`Source`, its :class:`Archive` files) and the
helpers the source modules share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Archive:
    filename: str
    size: str  # for messages: how big the download is
    checksum: str | None = None  # the published digest, "md5:<hex>" (None: not published)


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    base_url: str
    home: str  # the page a user downloads the archives from by hand
    archives: tuple[Archive, ...]
    keep: Callable[[str], bool]  # which archive members to extract
    check_layout: Callable[[Path], None]  # raise DataError unless the unpacked tree is usable
    prepare: Callable[..., None]
    remote: Callable[..., object] | None = None  # logs in etc.; None = plain files under base_url
    notes: str = ""  # extra advice for the manual download (account, licence)
    defaults: dict = field(default_factory=dict)

    def manual(self, raw_dir: str | Path) -> str:
        """One sentence: what to download, from where, and where to put it."""
        files = " and ".join(f"{a.filename} ({a.size})" for a in self.archives)
        where = (
            f"{Path(raw_dir) / self.archives[0].filename}"
            if len(self.archives) == 1
            else f"{raw_dir}/"
        )
        return f"Download {files} from {self.home} and put {'it' if len(self.archives) == 1 else 'them'} at {where}, then rerun{self.notes}."


def not_hidden(name: str) -> bool:
    """Skip macOS metadata (``__MACOSX/``, ``._name``) that some archives carry."""
    parts = name.split("/")
    return "__MACOSX" not in parts and not any(p.startswith("._") for p in parts)
