"""The public datasets through Snakemake: download (from a local mirror) -> prepare -> split,
and failures that a later run recovers from without manual cleanup."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_snakemake, write_config
from segmia.data.prepared import load_prepared
from upstream import (
    PASSWORD,
    USER,
    Upstream,
    cityscapes_trees,
    kvasir_tree,
    liver_tree,
    md5,
    tar_bytes,
    zip_bytes,
)

pytestmark = pytest.mark.slow

CREDENTIALS = {"CITYSCAPES_USERNAME": USER, "CITYSCAPES_PASSWORD": PASSWORD}
NO_CREDENTIALS = {"CITYSCAPES_USERNAME": None, "CITYSCAPES_PASSWORD": None}
FAST = {"retries": 1, "backoff": 0.01, "timeout": 10}


@pytest.fixture(scope="module")
def upstream():
    server = Upstream()
    server.files["/Task03_Liver.tar"] = tar_bytes(liver_tree())
    server.files["/kvasir-seg.zip"] = zip_bytes(kvasir_tree())
    for name, files in cityscapes_trees().items():
        server.files[f"/{name}"] = zip_bytes(files)
    yield server
    server.close()


def make_config(tmp, upstream, datasets=("liver", "kvasir", "cityscapes"), kvasir_md5=None):
    download = {**FAST, "base_url": upstream.url}
    liver_md5 = md5(upstream.files["/Task03_Liver.tar"])
    all_datasets = {
        "liver": {
            "source": "liver",
            "download": {**download, "checksums": {"Task03_Liver.tar": f"md5:{liver_md5}"}},
            "prepare": {"height": 32, "width": 32, "max_slices": 12},
            "split": {
                "groups": "none",  # 3 patients cannot fill two pools of 5 slices whole
                "victim_pool": 5,
                "shadow_pool": 5,
                "train_size": 2,
                "val_size": 1,
                "mia_size": 2,
            },
        },
        "kvasir": {
            "source": "kvasir",
            "download": {
                **download,
                "checksums": {"kvasir-seg.zip": f"md5:{kvasir_md5}"} if kvasir_md5 else {},
            },
            "prepare": {"height": 32, "width": 32},
            "split": {
                "victim_pool": 3,
                "shadow_pool": 3,
                "train_size": 1,
                "val_size": 1,
                "mia_size": 1,
                "nonmembers": "validation",
            },  # fmt: skip
        },
        "cityscapes": {
            "source": "cityscapes",
            "download": download,
            "prepare": {"height": 16, "width": 68},
            "split": {
                "victim_pool": 2,
                "shadow_pool": 2,
                "train_size": 1,
                "val_size": 1,
                "mia_size": 1,
                "nonmembers": "validation",
                "groups": "pools",  # cities whole between the pools only (paper config)
            },  # fmt: skip
        },
    }
    config = {
        "results": str(tmp / "results"),
        "resources": str(tmp / "resources"),
        "device": "cpu",
        "datasets": {d: all_datasets[d] for d in datasets},
        "architectures": {"tiny": {"family": "monai_unet", "channels": [4, 8], "strides": [2]}},
        "studies": {
            "s": {"type": "architectures", "dataset": datasets[0], "architectures": ["tiny"]}
        },
    }
    return write_config(tmp, config)


def prepared_targets(tmp, datasets):
    return [str(tmp / "resources" / "prepared" / d / "meta.json") for d in datasets]


def test_download_prepare_split_for_the_three_datasets(tmp_path, upstream):
    configfile = make_config(tmp_path, upstream)
    split = tmp_path / "results" / "kvasir" / "splits" / "s0.csv"
    targets = [*prepared_targets(tmp_path, ("liver", "kvasir", "cityscapes")), str(split)]
    proc = run_snakemake(
        "--cores", "2", *targets, workdir=tmp_path, configfile=configfile, env=CREDENTIALS
    )
    out = proc.stdout + proc.stderr
    assert "localrule download" in out  # runs on the head node under a cluster
    res = tmp_path / "resources"

    liver = load_prepared(res / "prepared" / "liver")
    assert liver.images.shape == (12, 1, 32, 32) and set(np.unique(liver.masks)) == {0, 1}
    assert liver.index["group"].nunique() == 3  # spread over every patient
    assert liver.meta["prepare"]["hu_window"] == [-100, 400]
    kvasir = load_prepared(res / "prepared" / "kvasir")
    assert kvasir.images.shape == (6, 3, 32, 32) and kvasir.images[0, 0, 16, 16] > 200  # red first
    cities = load_prepared(res / "prepared" / "cityscapes")
    assert cities.images.shape == (4, 3, 16, 68) and cities.num_classes == 19
    assert set(np.unique(cities.masks)) == set(range(19)) | {255}
    assert sorted(cities.index["group"].unique()) == ["aachen", "bochum"]

    rows = pd.read_csv(split)
    assert len(rows) == 6 and set(rows["pool"]) == {"victim", "shadow"}
    lock = json.loads((res / "checksums.lock.json").read_text())
    assert set(lock) == {
        "liver/Task03_Liver.tar",
        "kvasir/kvasir-seg.zip",
        "cityscapes/leftImg8bit_trainvaltest.zip",
        "cityscapes/gtFine_trainvaltest.zip",
    }
    logs = "".join(p.read_text() for p in (tmp_path / "results" / "logs").rglob("*.log"))
    assert "verified and saved" in logs
    assert PASSWORD not in logs + out and PASSWORD not in (res / "checksums.lock.json").read_text()
    again = run_snakemake("-n", "--cores", "1", *targets, workdir=tmp_path, configfile=configfile)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_checksum_mismatch_fails_clearly_and_a_corrected_run_needs_no_cleanup(tmp_path, upstream):
    target = prepared_targets(tmp_path, ("kvasir",))
    bad = make_config(tmp_path, upstream, ("kvasir",), kvasir_md5="0" * 32)
    proc = run_snakemake("--cores", "1", *target, workdir=tmp_path, configfile=bad, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "download" / "kvasir.log").read_text()
    assert "checksum mismatch" in log and "Download kvasir-seg.zip" in log
    assert "Traceback" not in log
    raw = tmp_path / "resources" / "raw" / "kvasir"
    assert not raw.exists() or list(raw.iterdir()) == []  # no archive, .part or extracted/
    good = make_config(tmp_path, upstream, ("kvasir",))
    run_snakemake("--cores", "1", *target, workdir=tmp_path, configfile=good)
    assert load_prepared(tmp_path / "resources" / "prepared" / "kvasir").images.shape[0] == 6


def test_missing_cityscapes_credentials_say_what_to_do(tmp_path, upstream):
    configfile = make_config(tmp_path, upstream, ("cityscapes",))
    proc = run_snakemake(
        "--cores",
        "1",
        *prepared_targets(tmp_path, ("cityscapes",)),
        workdir=tmp_path,
        configfile=configfile,
        check=False,
        env=NO_CREDENTIALS,
    )
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "download" / "cityscapes.log").read_text()
    for words in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD", "resources/raw/cityscapes/"):
        assert words in log, log
    assert not (tmp_path / "resources" / "raw" / "cityscapes" / "extracted").exists()
