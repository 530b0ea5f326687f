"""Fetching and unpacking the public datasets: resumable, retried, verified, atomic, safe.

- :func:`fetch` downloads one URL into ``<dest>.part`` (resumed with an HTTP ``Range`` request
  when a previous attempt left one), retries transient failures with exponential backoff,
  verifies the digest, and only then renames the file to ``dest``: a file at ``dest`` is always
  complete and verified. A ``.part`` file is never mistaken for a finished download.
- :class:`ChecksumLock` records the digest of the first good download of an archive that has no
  published checksum, and later downloads (or archives placed by hand) must match it.
- :func:`extract` unpacks a tar or zip archive after checking every member: absolute paths,
  ``..`` components, links, device files and the like are refused, so nothing can land outside
  the target directory.

Messages never contain credentials: URLs are shown without their user-info part and
passwords only ever travel in request bodies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from ..errors import DataError
from ..io import atomic_path

log = logging.getLogger("segmia")

CHUNK = 1 << 20
#: network read size: a dropped connection loses at most this much of what was received
NET_CHUNK = 1 << 16
#: HTTP statuses worth retrying (the server may recover); every other 4xx is final
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
DIGESTS = ("md5", "sha256")


class DownloadError(DataError):
    """A download failed for good (after the retries, or with a final HTTP status)."""


@dataclass(frozen=True)
class Policy:
    """How hard to try: attempts after the first, backoff base (s), socket timeout (s)."""

    retries: int = 5
    backoff: float = 2.0
    timeout: float = 60.0
    max_backoff: float = 120.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2**attempt)


def redact(url: str) -> str:
    """``url`` without user name and password (never shown in logs or messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


#: the fewest hex digits of a sha256 prefix (torch.hub's ``hash_prefix`` convention)
MIN_PREFIX = 8


def parse_checksum(text: str, where: str = "checksum", prefix: bool = False) -> tuple[str, str]:
    """``"md5:<hex>"`` or ``"sha256:<hex>"`` -> (algorithm, lower-case hex).

    With ``prefix``, a sha256 may also be given by its first 8 or more hex digits (torch.hub's
    ``hash_prefix``: the digits after the last '-' of a checkpoint's file name); :func:`verify`
    then compares it as a prefix.
    """
    algo, sep, digest = str(text).partition(":")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    size = {"md5": 32, "sha256": 64}.get(algo)
    short = prefix and algo == "sha256" and size is not None and MIN_PREFIX <= len(digest) < size
    if (
        not sep
        or size is None
        or (len(digest) != size and not short)
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise DataError(
            f"{where}: {text!r} is not a checksum; write it as md5:<32 hex digits> or "
            "sha256:<64 hex digits>"
            + (f" (or the first {MIN_PREFIX}+ hex digits of the sha256)." if prefix else ".")
        )
    return algo, digest


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """md5 and sha256 of a file, in one pass."""
    hashes = {name: hashlib.new(name) for name in DIGESTS}
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            for h in hashes.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashes.items()}


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


# --- checksum lock file ---------------------------------------------------------------------------


class ChecksumLock:
    """Digests of archives without a published checksum, recorded at their first good download.

    A JSON file (``{resources}/checksums.lock.json``) keyed ``<source>/<file name>``; updates
    hold an exclusive ``flock`` on a side file, so parallel download jobs do not lose entries.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(
                f"{self.path}: unreadable checksum lock file ({err}). Restore it from a backup, or "
                "delete it to record the digests of the next downloads afresh."
            ) from None
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        side = self.path.with_name(f".{self.path.name}.flock")
        with open(side, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def record(self, key: str, entry: dict) -> None:
        with self._locked():
            data = self._read()
            data[key] = entry
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def verify(digests: dict[str, str], expected: tuple[str, str] | None) -> bool:
    """Whether ``digests`` match ``expected`` (True when nothing is expected)."""
    if expected is None:
        return True
    algo, value = expected
    if len(value) < len(digests[algo]):  # a sha256 prefix (parse_checksum(..., prefix=True))
        return len(value) >= MIN_PREFIX and digests[algo].startswith(value)
    return digests[algo] == value


def describe(expected: tuple[str, str]) -> str:
    """How an expected digest reads in a message: the value, or 'a sha256 starting with ...'."""
    algo, value = expected
    full = {"md5": 32, "sha256": 64}.get(algo)
    return value if len(value) == full else f"a {algo} starting with {value}"


# --- HTTP -----------------------------------------------------------------------------------------


def _session():
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "segmia-dataset-downloader"
    # byte ranges and lengths must refer to the file itself, not to a compressed transfer
    session.headers["Accept-Encoding"] = "identity"
    return session


def _final_http_error(status: int, url: str) -> DownloadError:
    why = {
        401: "the server wants credentials",
        403: "access is forbidden",
        404: "the file is not there (404 Not Found)",
        410: "the file is gone (410)",
    }.get(status, f"HTTP status {status}")
    return DownloadError(f"{redact(url)}: {why}")


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    expected: tuple[str, str] | None = None,
    policy: Policy = Policy(),
    session=None,
    allow_redirects: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Download ``url`` to ``dest`` (resumable, retried, verified, atomic); return its digests.

    Transient failures (connection refused or reset, timeouts, 5xx, 429, a body shorter than
    announced) are retried ``policy.retries`` times with exponential backoff, resuming from what
    ``<dest>.part`` already holds. A digest mismatch deletes the ``.part`` file (so the next
    attempt starts clean) and raises :class:`DownloadError`, as do final HTTP statuses.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    session = session or _session()
    shown = redact(url)
    last_error = "no attempt made"
    for attempt in range(policy.retries + 1):
        if attempt:
            wait = policy.delay(attempt - 1)
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.1f s",
                shown,
                last_error,
                attempt,
                policy.retries,
                wait,
            )
            sleep(wait)
        last_error = _attempt(session, url, part, policy, allow_redirects)
        if last_error is None:
            break
    else:
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
        raise DownloadError(
            f"could not download {shown} after {policy.retries + 1} attempt(s): {last_error}"
        )
    return _keep_verified(part, dest, expected, shown)


def _attempt(session, url: str, part: Path, policy: Policy, allow_redirects: bool) -> str | None:
    """One request for what ``part`` still lacks: None once it holds the whole body, else why this
    attempt failed and should be retried. Final failures raise :class:`DownloadError`."""
    import requests

    shown = redact(url)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with session.get(
            url,
            headers=headers,
            stream=True,
            timeout=policy.timeout,
            allow_redirects=allow_redirects,
        ) as response:
            status = response.status_code
            if status == 416 and offset:
                # the .part file is already as long as the file (or longer): verify it later
                total = _content_range_total(response.headers.get("Content-Range"))
                if total is not None and total == offset:
                    return None
                part.unlink(missing_ok=True)
                return "the server refused to resume; restarting"
            if 300 <= status < 400:
                raise DownloadError(
                    f"{shown}: the server redirected to "
                    f"{redact(response.headers.get('Location', '?'))} instead of sending the "
                    "file (a login page? an expired session?)"
                )
            if status in RETRY_STATUS:
                return f"HTTP {status}"
            if status >= 400:
                raise _final_http_error(status, url)
            mode = "ab"
            if status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)
                    return "the server resumed at the wrong offset; restarting"
            else:  # 200: the whole file, from the start
                mode, offset = "wb", 0
            length = response.headers.get("Content-Length")
            want = offset + int(length) if length and length.isdigit() else None
            if offset:
                log.info("resuming %s at %s", shown, human(offset))
            else:
                log.info("downloading %s%s", shown, f" ({human(want)})" if want is not None else "")
            _copy_body(response, part, mode, want, shown)
            got = part.stat().st_size
            if want is not None and got < want:
                return f"connection closed after {human(got)} of {human(want)}"
            return None
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ) as err:
        raise DownloadError(f"{shown}: not a valid URL ({err})") from None
    except (requests.exceptions.RequestException, ConnectionError, TimeoutError) as err:
        # network trouble; a local disk problem (ENOSPC, EACCES) is an OSError raised as is
        return _describe_network_error(err)


def _keep_verified(
    part: Path, dest: Path, expected: tuple[str, str] | None, shown: str
) -> dict[str, str]:
    """Move a complete download into place if its digest matches; delete it otherwise."""
    digests = file_digests(part)
    if not verify(digests, expected):
        algo = expected[0]
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{shown}: checksum mismatch, {algo} of the download is {digests[algo]} but "
            f"{describe(expected)} was expected (the file is corrupt, cut short or a different "
            "version); the partial file was deleted"
        )
    os.replace(part, dest)
    log.info(
        "verified and saved %s (%s, sha256 %s)", dest, human(dest.stat().st_size), digests["sha256"]
    )
    return digests


def _copy_body(response, part: Path, mode: str, want: int | None, shown: str) -> None:
    done = part.stat().st_size if mode == "ab" and part.exists() else 0
    step = max(want // 10, CHUNK) if want else 1 << 30
    mark = done + step
    with open(part, mode) as fh:
        for block in response.iter_content(NET_CHUNK):
            fh.write(block)
            done += len(block)
            if done >= mark:
                mark += step
                pct = f" ({100 * done / want:.0f}%)" if want else ""
                log.info("%s: %s%s", shown, human(done), pct)
        fh.flush()
        os.fsync(fh.fileno())


def _content_range_start(header: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(header.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _content_range_total(header: str | None) -> int | None:
    # "bytes */200"
    try:
        return int(header.rsplit("/", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return None


def _describe_network_error(err: Exception) -> str:
    text = str(err)
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused (offline, or the server is down)"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "the host name could not be resolved (offline?)"
    if "timed out" in text.lower():
        return "the connection timed out"
    if "Connection broken" in text or "IncompleteRead" in text:
        return "the connection broke off mid-file"
    return type(err).__name__


# --- safe extraction ------------------------------------------------------------------------------


class UnsafeArchive(DataError):
    """An archive member would land outside the target directory, or is not a plain file."""


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    """The member's relative path, or raise UnsafeArchive."""
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(
            f"{archive.name}: member {name!r} has a Windows-style path; refusing to extract"
        )
    path = PurePosixPath(name)
    if path.is_absolute():
        raise UnsafeArchive(
            f"{archive.name}: member {name!r} has an absolute path; refusing to extract"
        )
    if ".." in path.parts:
        raise UnsafeArchive(
            f"{archive.name}: member {name!r} climbs out of the target directory with '..'; "
            "refusing to extract"
        )
    return path


def archive_members(archive: Path) -> list[str]:
    """Names of the regular files of a tar or zip archive (after the safety checks)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return [str(_check_zip_member(i, archive)) for i in zf.infolist() if not i.is_dir()]
    with tarfile.open(archive) as tf:
        return [str(_check_tar_member(m, archive)) for m in tf.getmembers() if m.isfile()]


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    path = _safe_name(member.name, archive)
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = path.parent if member.issym() else PurePosixPath()
        if target.is_absolute() or ".." in (base / target).parts:
            raise UnsafeArchive(
                f"{archive.name}: member {member.name!r} is a link to {member.linkname!r}, "
                "outside the target directory; refusing to extract"
            )
        raise UnsafeArchive(
            f"{archive.name}: member {member.name!r} is a link; the dataset archives hold plain "
            "files only, refusing to extract"
        )
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(
            f"{archive.name}: member {member.name!r} is a device, FIFO or other special file; "
            "refusing to extract"
        )
    return path


def _check_zip_member(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    path = _safe_name(info.filename, archive)
    kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0  # 3: Unix
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(
            f"{archive.name}: member {info.filename!r} is a link or special file; refusing to "
            "extract"
        )
    return path


def extract(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    keep: Callable[[str], bool] = lambda name: True,
) -> int:
    """Unpack the regular files of ``archive`` for which ``keep(name)`` is true into ``target``.

    Every member is checked before anything is written; an unsafe member refuses the whole
    archive (:class:`UnsafeArchive`); a truncated or corrupt archive raises :class:`DataError`.
    Returns the number of files written. The caller extracts into a temporary directory and
    renames it, so a failure leaves nothing that looks complete.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, target, keep)
        return _extract_tar(archive, target, keep)
    except UnsafeArchive:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(
            f"{archive.name}: the archive is truncated or corrupt ({str(err) or type(err).__name__})"
        ) from None


def _extract_zip(archive: Path, target: Path, keep) -> int:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        paths = [_check_zip_member(info, archive) for info in infos]
        written = 0
        for info, path in zip(infos, paths, strict=True):
            if info.is_dir() or not keep(str(path)):
                continue
            out = target.joinpath(*path.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:  # the CRC is checked on read
                shutil.copyfileobj(src, dst, CHUNK)
            written += 1
        return written


def _extract_tar(archive: Path, target: Path, keep) -> int:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_tar_member(member, archive)
        chosen = [m for m in members if m.isfile() and keep(m.name)]
        # belt and braces: Python's own "data" filter refuses what slipped through
        tf.extractall(target, members=chosen, filter="data")
        for m in chosen:  # a member cut short by truncation raises above; check sizes anyway
            if (target / m.name).stat().st_size != m.size:
                raise DataError(f"{archive.name}: member {m.name} is cut short (truncated archive)")
        return len(chosen)


def sentence(err: Exception) -> str:
    return str(err).strip().rstrip(".")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request(session, method: str, url: str, policy: Policy, sleep=time.sleep, **kwargs):
    """A small request (login, listing, checksum) with the same retries as :func:`fetch`."""
    import requests

    last_error = "no attempt made"
    for attempt in range(policy.retries + 1):
        if attempt:
            sleep(policy.delay(attempt - 1))
        try:
            response = session.request(method, url, timeout=policy.timeout, **kwargs)
        except (requests.exceptions.RequestException, ConnectionError, TimeoutError) as err:
            last_error = _describe_network_error(err)
            continue
        if response.status_code in RETRY_STATUS:
            last_error = f"HTTP {response.status_code}"
            continue
        return response
    raise DownloadError(
        f"could not reach {redact(url)} after {policy.retries + 1} attempt(s): {last_error}"
    )


class PlainRemote:
    """Archives served as plain files under a base URL (the official site or a mirror)."""

    allow_redirects = True

    def __init__(self, base_url: str, policy: Policy, env=None):
        self.base_url = base_url.rstrip("/")
        self.session = _session()

    def url(self, archive) -> str:
        return f"{self.base_url}/{archive.filename}"

    def checksum(self, archive) -> tuple[str, str] | None:
        return None


# --- one source: download, verify, extract ---------------------------------------------------------

EXTRACTED = "extracted"


def failure_details(err: Exception, dest: Path, why: str) -> tuple[str, str]:
    """(" (expected digest: ...)" for a checksum mismatch, " The partial download ... is kept"
    when a resumable .part file is left) for a failed fetch's message."""
    part = dest.with_name(dest.name + ".part")
    kept = (
        f" The partial download {part.name} is kept and resumed by the next run."
        if part.exists()
        else ""
    )
    hint = f" (expected digest: {why})" if "checksum mismatch" in str(err) else ""
    return hint, kept


def policy_from(params: dict) -> Policy:
    return Policy(
        retries=int(params.get("retries", 5)),
        backoff=float(params.get("backoff", 2.0)),
        timeout=float(params.get("timeout", 60.0)),
    )


def download_source(
    source,
    raw_dir: str | os.PathLike,
    params: dict,
    lock_path: str | os.PathLike,
    env: dict | None = None,
) -> Path:
    """Get every archive of ``source`` into ``raw_dir`` and unpack them to ``raw_dir/extracted``.

    An archive already in ``raw_dir`` (a previous download, or placed there by hand) is verified
    and reused; a missing one is downloaded from ``params['base_url']`` (or the official site).
    Digests are checked against, in this order: ``params['checksums']``, the published digest,
    the digest recorded in the lock file at the first good download. The tree is unpacked into a
    temporary directory and renamed when complete and checked.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ if env is None else env
    policy = policy_from(params)
    base_url = params.get("base_url") or source.base_url
    lock = ChecksumLock(lock_path)
    overrides = {
        name: parse_checksum(value, f"datasets.*.download.checksums.{name}")
        for name, value in (params.get("checksums") or {}).items()
    }
    unknown = sorted(set(overrides) - {a.filename for a in source.archives})
    if unknown:
        raise DataError(
            f"download.checksums names {', '.join(unknown)}, which is not an archive of the "
            f"{source.name} dataset; its archives: "
            f"{', '.join(a.filename for a in source.archives)}."
        )
    got: dict[str, tuple[Path, dict, str]] = {}  # file name -> (path, digests, origin)
    remote = None
    for archive in source.archives:
        dest = raw_dir / archive.filename
        key = f"{source.name}/{archive.filename}"
        expected, why = _expected(archive, overrides, lock, key)
        if dest.exists():
            log.info("found %s; verifying it", dest)
            digests = file_digests(dest)
            if not verify(digests, expected):
                algo, value = expected
                raise DataError(
                    f"{dest} is there but its {algo} is {digests[algo]}, not {value} ({why}): it is "
                    f"damaged, cut short or a different version. Delete it and rerun to download "
                    f"it again, or replace it with a good copy. {source.manual(raw_dir)}"
                )
            got[archive.filename] = (dest, digests, "placed")
            continue
        try:
            if remote is None:
                remote = (source.remote or PlainRemote)(base_url, policy, env)
            published = remote.checksum(archive)
            if expected is None and published is not None:
                expected, why = published, "the checksum published by the server"
            url = remote.url(archive)
            digests = fetch(
                url,
                dest,
                expected=expected,
                policy=policy,
                session=remote.session,
                allow_redirects=remote.allow_redirects,
            )
        except DownloadError as err:
            hint, kept = failure_details(err, dest, why)
            raise DownloadError(
                f"{source.title}: {sentence(err)}{hint}.{kept} {source.manual(raw_dir)}"
            ) from None
        got[archive.filename] = (dest, digests, url)
    target = _unpack(source, raw_dir, got)
    for archive in source.archives:
        path, digests, origin = got[archive.filename]
        key = f"{source.name}/{archive.filename}"
        entry = lock.get(key)
        if entry is None or entry.get("sha256") != digests["sha256"]:
            lock.record(
                key,
                {
                    **digests,
                    "size": path.stat().st_size,
                    "from": redact(origin) if origin != "placed" else f"placed by hand at {path}",
                    "recorded": now(),
                },
            )
    if not params.get("keep_archives", True):
        for path, _, _ in got.values():
            path.unlink(missing_ok=True)
            log.info("deleted %s (download.keep_archives: false)", path)
    return target


def _expected(archive, overrides, lock: ChecksumLock, key: str):
    if archive.filename in overrides:
        return overrides[archive.filename], "from the config's download.checksums"
    if archive.checksum:
        return parse_checksum(archive.checksum), "the published checksum"
    entry = lock.get(key)
    if entry and entry.get("sha256"):
        return (
            ("sha256", entry["sha256"]),
            f"recorded in {lock.path} at the first download on {entry.get('recorded', '?')}; if "
            "the upstream file really changed, delete that entry",
        )
    return None, "none"


def _unpack(source, raw_dir: Path, got: dict) -> Path:
    target = raw_dir / EXTRACTED
    for stale in raw_dir.glob(f".{EXTRACTED}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = raw_dir / f".{EXTRACTED}.tmp-{os.getpid()}"
    try:
        for path, _, _ in got.values():
            log.info("unpacking %s", path.name)
            count = extract(path, tmp, source.keep)
            log.info("unpacked %d files from %s", count, path.name)
        source.check_layout(tmp)
    except DataError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        removed = [p for p, _, origin in got.values() if origin != "placed"]
        for p in removed:
            p.unlink(missing_ok=True)
        if removed:
            what = (
                f" The downloaded archive{'s were' if len(removed) > 1 else ' was'} deleted; rerun "
                "to download again. If it fails again, the server or mirror serves a damaged file:"
            )
        else:
            what = " Replace the archive with a good copy:"
        raise DataError(
            f"{source.title}: {sentence(err)}.{what} {source.manual(raw_dir)}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
