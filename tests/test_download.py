"""Downloads: resume, retries, checksums, the lock file, safe extraction, Cityscapes' login, and
the messages a user sees when something fails (all against a server on 127.0.0.1)."""

import json
import tarfile

import numpy as np
import pytest
from conftest import run_segmia
from segmia.data.download import (
    DownloadError,
    Policy,
    UnsafeArchive,
    download_source,
    extract,
    fetch,
    file_digests,
    redact,
)
from segmia.data.sources import get_source
from segmia.errors import DataError
from upstream import (
    PASSWORD,
    USER,
    Upstream,
    cityscapes_trees,
    free_port,
    kvasir_tree,
    md5,
    tar_bytes,
    zip_bytes,
)

FAST = Policy(retries=2, backoff=0.001, timeout=5)
PARAMS = {"retries": 2, "backoff": 0.001, "timeout": 5}
CREDENTIALS = {"CITYSCAPES_USERNAME": USER, "CITYSCAPES_PASSWORD": PASSWORD}


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def blob(n=300_000):
    return bytes(range(256)) * (n // 256)


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- fetch ----------------------------------------------------------------------------------------


def test_fetch_resumes_a_dropped_connection_with_a_range_request(upstream, tmp_path):
    data = blob()
    upstream.files["/a.bin"] = data
    upstream.drop_once["/a.bin"] = 100_000
    digests = fetch(f"{upstream.url}/a.bin", tmp_path / "a.bin", policy=FAST)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert digests["md5"] == md5(data)
    ranges = [h.get("Range") for _, p, h in upstream.requests]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0
    assert leftovers(tmp_path) == ["a.bin"]


def test_fetch_continues_a_part_file_left_by_an_earlier_run(upstream, tmp_path):
    data = blob()
    upstream.files["/a.bin"] = data
    (tmp_path / "a.bin.part").write_bytes(data[:123_456])
    fetch(f"{upstream.url}/a.bin", tmp_path / "a.bin", policy=FAST, expected=("md5", md5(data)))
    assert (tmp_path / "a.bin").read_bytes() == data
    assert upstream.requests[0][2]["Range"] == "bytes=123456-"


def test_fetch_retries_server_errors_with_exponential_backoff(upstream, tmp_path):
    upstream.files["/a.bin"] = b"payload"
    upstream.status["/a.bin"] = [503, 502]
    waits = []
    fetch(
        f"{upstream.url}/a.bin",
        tmp_path / "a.bin",
        policy=Policy(retries=3, backoff=0.5),
        sleep=waits.append,
    )
    assert waits == [0.5, 1.0]
    assert (tmp_path / "a.bin").read_bytes() == b"payload"


def test_fetch_checksum_mismatch_deletes_the_partial_file(upstream, tmp_path):
    upstream.files["/a.bin"] = b"not what was published"
    with pytest.raises(
        DownloadError, match=r"checksum mismatch, md5 of the download is [0-9a-f]{32}"
    ):
        fetch(f"{upstream.url}/a.bin", tmp_path / "a.bin", policy=FAST, expected=("md5", "0" * 32))
    assert leftovers(tmp_path) == []


def test_fetch_404_is_final_and_writes_nothing(upstream, tmp_path):
    with pytest.raises(DownloadError, match="404 Not Found"):
        fetch(f"{upstream.url}/missing.zip", tmp_path / "m.zip", policy=FAST)
    assert len(upstream.requests) == 1  # not retried
    assert leftovers(tmp_path) == []


def test_fetch_connection_refused_after_the_retries(tmp_path):
    waits = []
    with pytest.raises(DownloadError, match="after 3 attempt.*connection refused"):
        fetch(
            f"http://127.0.0.1:{free_port()}/a.zip",
            tmp_path / "a.zip",
            policy=FAST,
            sleep=waits.append,
        )
    assert len(waits) == 2
    assert leftovers(tmp_path) == []


def test_urls_are_shown_without_credentials():
    assert redact("https://bob:hunter2@mirror.org/x.zip") == "https://mirror.org/x.zip"
    assert redact("https://mirror.org/x.zip") == "https://mirror.org/x.zip"


# --- safe extraction ------------------------------------------------------------------------------


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("archive", "words"),
    [
        (lambda: tar_bytes({"data/../../evil.txt": b"x"}), "'..'"),
        (lambda: tar_bytes({"/tmp/evil.txt": b"x"}), "absolute path"),
        (lambda: tar_bytes({"a.txt": b"x"}, [_link("data/link", "/etc/passwd")]), "outside"),
        (lambda: tar_bytes({"a.txt": b"x"}, [_link("data/l", "../../x", tarfile.LNKTYPE)]), "link"),
        (lambda: zip_bytes({"ok.txt": b"x", "../evil.txt": b"x"}), "'..'"),
        (lambda: zip_bytes({"/abs/evil.txt": b"x"}), "absolute path"),
        (lambda: zip_bytes({"dir\\..\\evil.txt": b"x"}), "Windows-style"),
    ],
)
def test_unsafe_members_refuse_the_whole_archive(tmp_path, archive, words):
    path = tmp_path / "bad.archive"
    path.write_bytes(archive())
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match="refusing to extract") as info:
        extract(path, target)
    assert words in str(info.value)
    assert leftovers(target) == [] and not (tmp_path / "evil.txt").exists()


def test_truncated_archives_are_reported(tmp_path):
    tar = tar_bytes({"a/big.bin": blob(50_000), "a/b.txt": b"x"})
    zipped = zip_bytes({"a/big.bin": blob(50_000)})
    for name, data in (
        ("t.tar", tar[:30_000]),
        ("z.zip", zipped[:-200]),
        ("z2.zip", zipped[:5000]),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match="truncated or corrupt"):
            extract(tmp_path / name, tmp_path / f"out_{name}")


def test_extract_keeps_only_the_members_asked_for(tmp_path):
    path = tmp_path / "c.zip"
    path.write_bytes(zip_bytes(cityscapes_trees()["gtFine_trainvaltest.zip"]))
    n = extract(path, tmp_path / "out", get_source("cityscapes").keep)
    files = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert n == len(files) == 6  # README, license.txt and 4 train label-id maps
    assert all(f.endswith("_gtFine_labelIds.png") for f in files if f.startswith(("aachen", "b")))


# --- one source, end to end -----------------------------------------------------------------------


def _kvasir(upstream, tmp_path, **params):
    return download_source(
        get_source("kvasir"),
        tmp_path / "raw" / "kvasir",
        {**PARAMS, "base_url": upstream.url, **params},
        tmp_path / "checksums.lock.json",
    )


def test_first_download_is_recorded_in_the_lock_file_and_later_ones_must_match(upstream, tmp_path):
    good = zip_bytes(kvasir_tree())
    upstream.files["/kvasir-seg.zip"] = good
    target = _kvasir(upstream, tmp_path)
    assert (target / "kvasir-seg" / "images").is_dir()
    lock = json.loads((tmp_path / "checksums.lock.json").read_text())
    assert lock["kvasir/kvasir-seg.zip"]["md5"] == md5(good)
    # the upstream file changes: a fresh download no longer matches the recorded digest
    (tmp_path / "raw" / "kvasir" / "kvasir-seg.zip").unlink()
    upstream.files["/kvasir-seg.zip"] = zip_bytes(kvasir_tree(n=4))
    with pytest.raises(DownloadError) as info:
        _kvasir(upstream, tmp_path)
    message = str(info.value)
    assert "checksum mismatch" in message and "checksums.lock.json" in message
    assert "https://datasets.simula.no/downloads/kvasir-seg.zip" in message
    assert str(tmp_path / "raw" / "kvasir" / "kvasir-seg.zip") in message
    assert "kvasir-seg.zip" not in leftovers(tmp_path / "raw" / "kvasir")
    assert "kvasir-seg.zip.part" not in leftovers(tmp_path / "raw" / "kvasir")


def test_an_archive_placed_by_hand_is_used_without_network(tmp_path):
    raw = tmp_path / "raw" / "kvasir"
    raw.mkdir(parents=True)
    (raw / "kvasir-seg.zip").write_bytes(zip_bytes(kvasir_tree()))
    target = download_source(
        get_source("kvasir"),
        raw,
        {**PARAMS, "base_url": f"http://127.0.0.1:{free_port()}"},
        tmp_path / "lock.json",
    )
    assert len(list((target / "kvasir-seg" / "masks").iterdir())) == 6
    assert "placed by hand" in (tmp_path / "lock.json").read_text()


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (lambda good: good[: len(good) // 2], "truncated or corrupt"),
        (lambda good: zip_bytes({**kvasir_tree(), "../../evil.jpg": b"x"}), "refusing to extract"),
        (lambda good: zip_bytes({"something/else.txt": b"x"}), "Kvasir-SEG layout"),
    ],
)
def test_a_bad_archive_is_deleted_and_the_next_good_run_succeeds(upstream, tmp_path, bad, words):
    good = zip_bytes(kvasir_tree())
    upstream.files["/kvasir-seg.zip"] = bad(good)
    with pytest.raises(DataError) as info:
        _kvasir(upstream, tmp_path)
    assert words in str(info.value) and "was deleted" in str(info.value)
    raw = tmp_path / "raw" / "kvasir"
    assert leftovers(raw) == []  # no archive, no part file, no half-extracted tree
    assert not (tmp_path / "checksums.lock.json").exists()  # a bad file is never trusted
    upstream.files["/kvasir-seg.zip"] = good
    assert (_kvasir(upstream, tmp_path) / "kvasir-seg").is_dir()


def test_published_checksum_mismatch_then_a_good_run(upstream, tmp_path):
    tar = tar_bytes({"Task03_Liver/dataset.json": b"{}"})
    upstream.files["/Task03_Liver.tar"] = tar
    source = get_source("liver")
    params = {**PARAMS, "base_url": upstream.url}
    with pytest.raises(DownloadError) as info:  # the published MD5 is that of the real archive
        download_source(source, tmp_path / "raw" / "liver", params, tmp_path / "lock.json")
    message = str(info.value)
    assert "a90ec6c4aa7f6a3d087205e23d4e6397" in message and "published checksum" in message
    assert "Task03_Liver.tar" in message and "medicaldecathlon.com" in message
    assert leftovers(tmp_path / "raw" / "liver") == []


def test_offline_message_says_what_to_download_and_where(tmp_path):
    with pytest.raises(DownloadError) as info:
        download_source(
            get_source("liver"),
            tmp_path / "raw" / "liver",
            {**PARAMS, "base_url": f"http://127.0.0.1:{free_port()}"},
            tmp_path / "lock.json",
        )
    message = str(info.value)
    assert "connection refused" in message
    assert "Download Task03_Liver.tar" in message
    assert f"put it at {tmp_path / 'raw' / 'liver' / 'Task03_Liver.tar'}" in message
    assert "\n" not in message


def test_404_message(upstream, tmp_path):
    with pytest.raises(DownloadError, match=r"404 Not Found.*Download kvasir-seg.zip"):
        _kvasir(upstream, tmp_path)


# --- Cityscapes -----------------------------------------------------------------------------------


def _cityscapes(upstream, tmp_path, env):
    return download_source(
        get_source("cityscapes"),
        tmp_path / "raw" / "cityscapes",
        {**PARAMS, "base_url": upstream.url},
        tmp_path / "lock.json",
        env=env,
    )


def _serve_cityscapes(upstream):
    for name, files in cityscapes_trees().items():
        upstream.files[f"/{name}"] = zip_bytes(files)


def test_cityscapes_login_and_published_md5(upstream, tmp_path):
    _serve_cityscapes(upstream)
    target = _cityscapes(upstream, tmp_path, CREDENTIALS)
    assert (target / "leftImg8bit" / "train" / "aachen").is_dir()
    assert not (target / "leftImg8bit" / "val").exists()  # only the train split is unpacked
    paths = upstream.paths()
    assert "/md5-sum/?packageID=3" in paths and "/file-handling/?packageID=1" in paths
    for name in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"):
        path = tmp_path / "raw" / "cityscapes" / name
        assert file_digests(path)["md5"] == md5(upstream.files[f"/{name}"])
    assert PASSWORD not in (tmp_path / "lock.json").read_text()


def test_cityscapes_without_credentials_names_the_variables_and_the_folder(upstream, tmp_path):
    _serve_cityscapes(upstream)
    with pytest.raises(DownloadError) as info:
        _cityscapes(upstream, tmp_path, {})
    message = str(info.value)
    for words in (
        "CITYSCAPES_USERNAME",
        "CITYSCAPES_PASSWORD",
        "leftImg8bit_trainvaltest.zip",
        "gtFine_trainvaltest.zip",
        f"{tmp_path / 'raw' / 'cityscapes'}/",
        "cityscapes-dataset.com",
    ):
        assert words in message, message
    assert upstream.requests == []


def test_cityscapes_wrong_password_never_shows_it(upstream, tmp_path):
    _serve_cityscapes(upstream)
    env = {**CREDENTIALS, "CITYSCAPES_PASSWORD": "wrong-Pa55word"}
    with pytest.raises(DownloadError, match="login .* failed") as info:
        _cityscapes(upstream, tmp_path, env)
    assert "wrong-Pa55word" not in str(info.value) and USER not in str(info.value)
    assert leftovers(tmp_path / "raw" / "cityscapes") == []


def test_cityscapes_archives_placed_by_hand_need_no_account(tmp_path):
    raw = tmp_path / "raw" / "cityscapes"
    raw.mkdir(parents=True)
    for name, files in cityscapes_trees().items():
        (raw / name).write_bytes(zip_bytes(files))
    target = download_source(
        get_source("cityscapes"),
        raw,
        {**PARAMS, "base_url": f"http://127.0.0.1:{free_port()}"},
        tmp_path / "lock.json",
        env={},
    )
    assert len(list((target / "gtFine" / "train").rglob("*_labelIds.png"))) == 4


# --- the command line -----------------------------------------------------------------------------


def test_cli_prints_one_paragraph_without_traceback(tmp_path):
    proc = run_segmia(
        "download",
        "--source",
        "kvasir",
        "--raw",
        str(tmp_path / "raw" / "kvasir"),
        "--lock",
        str(tmp_path / "lock.json"),
        "--params",
        json.dumps({**PARAMS, "retries": 0, "base_url": f"http://127.0.0.1:{free_port()}"}),
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and error[0].startswith("segmia download: error: Kvasir-SEG:")
    assert "Download kvasir-seg.zip" in error[0]


def test_tar_member_sizes_match_after_extraction(tmp_path):
    data = {"Task03_Liver/a.bin": blob(10_000), "Task03_Liver/dataset.json": b"{}"}
    (tmp_path / "t.tar").write_bytes(tar_bytes(data))
    assert extract(tmp_path / "t.tar", tmp_path / "out") == 2
    for name, content in data.items():
        assert (tmp_path / "out" / name).read_bytes() == content


@pytest.mark.parametrize("failure", ["404", "refused", "checksum", "dropped"])
def test_a_later_good_run_needs_no_cleanup(upstream, tmp_path, failure):
    noise = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    good = zip_bytes({**kvasir_tree(), "kvasir-seg/noise.bin": noise})  # larger than a read
    params = {**PARAMS, "retries": 0, "base_url": upstream.url}
    if failure == "refused":
        params["base_url"] = f"http://127.0.0.1:{free_port()}"
    elif failure == "checksum":
        upstream.files["/kvasir-seg.zip"] = good
        params["checksums"] = {"kvasir-seg.zip": "sha256:" + "ab" * 32}
    elif failure == "dropped":
        upstream.files["/kvasir-seg.zip"] = good
        upstream.drop_once["/kvasir-seg.zip"] = len(good) - 100
    raw = tmp_path / "raw" / "kvasir"
    with pytest.raises(DownloadError, match="Download kvasir-seg.zip"):
        download_source(get_source("kvasir"), raw, params, tmp_path / "lock.json")
    assert not (raw / "kvasir-seg.zip").exists() and not (raw / "extracted").exists()
    if failure == "dropped":  # what arrived is kept for the next run to resume
        assert (raw / "kvasir-seg.zip.part").exists()
    upstream.files["/kvasir-seg.zip"] = good
    fixed = {**PARAMS, "base_url": upstream.url}
    assert (
        download_source(get_source("kvasir"), raw, fixed, tmp_path / "lock.json") / "kvasir-seg"
    ).is_dir()
    assert sorted(p.name for p in raw.iterdir()) == ["extracted", "kvasir-seg.zip"]
    if failure == "dropped":
        assert upstream.requests[-1][2].get("Range", "").startswith("bytes=")
