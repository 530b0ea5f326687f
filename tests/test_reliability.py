"""Failure injection below Snakemake: atomic writes and kills, a full disk, GPU out-of-memory,
crafted (code-running) checkpoints and corrupt prepared data.

Every failure must give one paragraph saying what to do (no traceback), exit status 1, and leave
finished outputs as they were. The same faults through Snakemake: test_reliability_workflow.py.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_segmia, snakemake_env, synthetic_ct_job, tiny_spec, train_argv
from segmia import cli, io
from segmia.data.prepared import load_prepared
from segmia.errors import DataError

SYNTHETIC = {"groups": 4, "group_size": 2, "height": 16, "width": 16, "noise": 0.3, "seed": 0}
SIZES = {"victim_pool": 20, "shadow_pool": 20, "train_size": 12, "val_size": 4, "mia_size": 4}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


# --- atomic writes ---------------------------------------------------------------------------------

WRITERS = {
    "npy": (io.write_npy, "a.npy", lambda: np.arange(50_000, dtype=np.int64)),
    "torch": (io.write_torch, "a.pt", lambda: {"w": torch.arange(50_000.0)}),
    "csv": (io.write_csv, "a.csv", lambda: pd.DataFrame({"a": range(50_000)})),
    "json": (io.write_json, "a.json", lambda: list(range(50_000))),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_failed_write_keeps_the_previous_file(tmp_path, kind, monkeypatch):
    write, name, payload = WRITERS[kind]
    target = tmp_path / name
    target.write_bytes(b"finished earlier")

    def crash(src, dst):  # the job dies once the data is written, before the rename
        assert Path(src).stat().st_size > 0 and Path(dst) == target
        raise RuntimeError("killed")

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(RuntimeError, match="killed"):
        write(target, payload())
    monkeypatch.undo()
    assert target.read_bytes() == b"finished earlier"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_outputs_get_the_usual_file_mode_not_mkstemps_0600(tmp_path, kind):
    write, name, payload = WRITERS[kind]
    write(tmp_path / name, payload())
    (tmp_path / "plain").touch()  # what open() gives under this umask
    assert (tmp_path / name).stat().st_mode == (tmp_path / "plain").stat().st_mode


KILLED_WRITER = """
import sys, time
from segmia.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as fh:
        fh.write(b"half of the data")
        fh.flush()
        print("writing", flush=True)
        time.sleep(120)
        fh.write(b" and the rest")
"""


@pytest.mark.parametrize("existing", [False, True])
def test_a_writer_killed_mid_write_never_leaves_a_file_under_the_final_name(tmp_path, existing):
    target = tmp_path / "model.pt"
    if existing:
        target.write_bytes(b"the previous, complete version")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=snakemake_env(),
    )
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if existing:
        assert target.read_bytes() == b"the previous, complete version"
    else:
        assert not target.exists()
    # what a SIGKILL leaves is a hidden temporary beside it, never the output's own name
    (left,) = leftovers(tmp_path)
    assert left.startswith(".model.pt.") and (tmp_path / left).read_bytes() == b"half of the data"
    io.write_torch(target, {"w": torch.ones(2)})  # a rerun writes the output regardless
    assert torch.equal(io.read_torch(target)["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("name", "content", "reader", "words"),
    [
        ("a.npy", None, io.read_npy, "not a readable .npy array"),
        ("a.pt", None, io.read_torch, "unreadable checkpoint"),
        ("a.json", b'{"val_dice": 0.9', io.read_json, "not valid JSON"),
        ("a.csv", b"\xff\xfe\x00garbage", io.read_csv, "unreadable CSV"),
    ],
)
def test_truncated_or_corrupt_files_are_reported_by_name(tmp_path, name, content, reader, words):
    path = tmp_path / name
    if content is None:  # a complete file cut in half
        if name.endswith(".npy"):
            io.write_npy(path, np.arange(10_000))
        else:
            io.write_torch(path, {"w": torch.arange(10_000.0)})
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        reader(path)
    assert str(path) in str(info.value) and words in str(info.value)
    assert "rerun" in str(info.value)


# --- out of disk space -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root: skipped elsewhere; the monkeypatched tests cover the code)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    (mount / "finished.json").write_text('{"done": true}\n')
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_writer_reports_a_full_disk_as_enospc_naming_the_file(small_disk, kind):
    write, name, payload = WRITERS[kind]
    big = {
        "npy": lambda: np.zeros(1 << 20, np.uint8),
        "torch": lambda: {"w": torch.zeros(1 << 18)},
        "csv": lambda: pd.DataFrame({"a": np.arange(1 << 17)}),
        "json": lambda: list(range(1 << 17)),
    }[kind]
    with pytest.raises(OSError) as info:
        write(small_disk / name, big())
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(small_disk / name)
    assert not (small_disk / name).exists() and leftovers(small_disk) == []
    assert (small_disk / "finished.json").read_text() == '{"done": true}\n'


MEMMAP = """
import sys, numpy as np
from segmia.io import open_memmap
try:
    out = open_memmap(sys.argv[1], np.float16, (64, 2, 64, 64))
    out[:] = 1.0
except OSError as err:
    print("ENOSPC" if err.errno == 28 else err)
"""


def test_a_memory_mapped_output_on_a_full_disk_is_an_error_not_a_crash(small_disk):
    # without the up-front reservation the first write to an unbacked page kills with SIGBUS
    proc = subprocess.run(
        [sys.executable, "-c", MEMMAP, str(small_disk / "logits.npy")],
        capture_output=True,
        text=True,
        env=snakemake_env(),
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ENOSPC", (proc.returncode, proc.stderr)


def _one_error_line(stderr: str, step: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"segmia {step}: error: "), stderr
    return lines[0]


def test_steps_on_a_full_disk_exit_1_with_the_fix_and_keep_finished_outputs(small_disk, tmp_path):
    params = {"groups": 20, "group_size": 4, "height": 64, "width": 64, "noise": 0.3, "seed": 0}
    proc = run_segmia(
        "synthesize",
        "--source",
        "synthetic_ct",
        "--params",
        json.dumps(params),
        "--out",
        str(small_disk / "prepared"),
        check=False,
    )
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr, "synthesize")
    assert "no space left on the device while writing" in line and "Free disk space" in line
    assert str(small_disk / "prepared") in line
    assert (small_disk / "finished.json").read_text() == '{"done": true}\n'
    assert leftovers(small_disk / "prepared") == []
    assert not (small_disk / "prepared" / "meta.json").exists()

    # the memory-mapped writer of the public datasets (prepare)
    from upstream import kvasir_tree, write_tree

    raw = write_tree(tmp_path / "raw", kvasir_tree())
    proc = run_segmia(
        "prepare",
        "--source",
        "kvasir",
        "--raw",
        str(raw),
        "--params",
        json.dumps({"height": 128, "width": 128}),
        "--out",
        str(small_disk / "kvasir"),
        check=False,
    )
    assert proc.returncode == 1
    assert "no space left on the device" in _one_error_line(proc.stderr, "prepare")
    assert list((small_disk / "kvasir").iterdir()) == []


def test_disk_full_is_recognised_from_each_writers_error(tmp_path, monkeypatch):
    """The same classification without root: numpy's short write and torch's RuntimeError count
    as a full disk only when the file system is (nearly) full; other errors pass unchanged."""
    target = tmp_path / "a.npy"

    def short_write(*args, **kwargs):
        raise OSError("1048576 requested and 4096 written")

    monkeypatch.setattr(io.np, "save", short_write)
    with pytest.raises(OSError, match="requested and") as info:  # plenty of space: not ENOSPC
        io.write_npy(target, np.zeros(3))
    assert info.value.errno is None

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(io.os, "statvfs", lambda path: Full)
    with pytest.raises(OSError) as info:
        io.write_npy(target, np.zeros(3))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)

    def zip_writer_failed(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", zip_writer_failed)
    with pytest.raises(OSError) as info:
        io.write_torch(tmp_path / "m.pt", {})
    assert info.value.errno == errno.ENOSPC and "inline_container" in info.value.strerror
    with pytest.raises(PermissionError):  # an errno other than ENOSPC is not a full disk

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(io.np, "save", denied)
        io.write_npy(target, np.zeros(3))
    assert leftovers(tmp_path) == []


def test_cli_reports_enospc_in_one_paragraph(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.np, "save", full)
    out = tmp_path / "prepared"
    code = cli.main(
        [
            "synthesize",
            "--source",
            "synthetic_ct",
            "--params",
            json.dumps(SYNTHETIC),
            "--out",
            str(out),
        ]
    )
    assert code == 1
    line = _one_error_line(capsys.readouterr().err, "synthesize")
    assert f"while writing {out / 'images.npy'}" in line and "finished outputs are intact" in line
    assert not out.exists() or leftovers(out) == []


# --- GPU out of memory -----------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path):
    return synthetic_ct_job(tmp_path, SIZES)


def test_gpu_out_of_memory_says_lower_the_batch_size_and_a_rerun_resumes(
    tmp_path, prepared, monkeypatch, capsys
):
    data, split = prepared
    finished = tmp_path / "finished"
    assert cli.main(train_argv(data, split, tiny_spec(epochs=1), finished)) == 0
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    capsys.readouterr()

    from segmia.models import train

    evaluate, calls = train.evaluate, []

    def oom_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"
            )
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", oom_in_epoch_2)
    out = tmp_path / "victim"
    assert cli.main(train_argv(data, split, tiny_spec(), out)) == 1
    line = _one_error_line(capsys.readouterr().err, "train")
    for words in (
        "the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB",
        "Lower training.batch_size",
        "snakemake --resources gpu=1",
        "finished outputs are intact",
    ):
        assert words in line, line
    assert not (out / "model.pt").exists() and leftovers(out) == []
    assert io.read_torch(out / ".checkpoint" / "last.pt")["epoch"] == 0
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before

    monkeypatch.setattr(train, "evaluate", evaluate)
    assert cli.main(train_argv(data, split, tiny_spec(), out)) == 0
    assert "resuming after epoch 1 of 3" in capsys.readouterr().err
    assert len(pd.read_csv(out / "history.csv")) == 3


@pytest.mark.parametrize(
    ("step", "hint"),
    [
        ("fit-attack", "Lower attack.batch_size"),
        ("query", "Run fewer GPU jobs at once (snakemake --resources gpu=1)"),
        ("evaluate", "Run fewer GPU jobs at once"),
    ],
)
def test_every_gpu_step_turns_out_of_memory_into_advice(monkeypatch, capsys, step, hint):
    def oom(args):
        raise RuntimeError("CUDA error: out of memory")  # cuDNN/cuBLAS say it this way

    monkeypatch.setattr(cli, f"cmd_{step.replace('-', '_')}", oom)
    args = {
        "fit-attack": ["--shadow-query", "q", "--data", "d", "--spec", "{}", "--out", "o"],
        "query": ["--model", "m", "--data", "d", "--split", "s", "--pool", "victim"]
        + ["--train-size", "1", "--sizes", "{}", "--out", "o"],
        "evaluate": ["--victim-query", "q", "--shadow-model", "s", "--shadow-query", "sq"]
        + ["--data", "d", "--specs", "{}", "--out", "o"],
    }[step]
    assert cli.main([step, *args]) == 1
    assert hint in _one_error_line(capsys.readouterr().err, step)


# --- crafted checkpoints ---------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path: Path, marker: Path) -> Path:
    weights = {"conv.weight": torch.zeros(2, 2)}
    torch.save({**weights, "payload": Payload(marker)}, path)
    return path


def test_the_crafted_checkpoint_would_run_code_with_a_plain_torch_load(tmp_path):
    """The control: the payload is live (so the refusals below are meaningful)."""
    marker = tmp_path / "pwned"
    torch.load(_crafted(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "model.pt", marker)
    with pytest.raises(DataError) as info:
        io.read_torch(path)
    message = str(info.value)
    assert str(path) in message and "refused to load" in message
    assert "weights_only=True" in message
    assert not marker.exists()


def test_a_step_refuses_a_crafted_model_in_one_paragraph(tmp_path, prepared):
    data, split = prepared
    model_dir = tmp_path / "model"
    io.write_json(model_dir / "spec.json", tiny_spec())
    marker = tmp_path / "pwned"
    _crafted(model_dir / "model.pt", marker)
    proc = run_segmia(
        "query",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--split",
        str(split),
        "--pool",
        "victim",
        "--train-size",
        "12",
        "--sizes",
        json.dumps(SIZES),
        "--out",
        str(tmp_path / "query"),
        "--device",
        "cpu",
        check=False,
    )
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr, "query")
    assert f"{model_dir / 'model.pt'}: refused to load" in line
    assert not marker.exists() and not (tmp_path / "query" / "logits.npy").exists()


def test_a_crafted_epoch_checkpoint_is_ignored_and_training_starts_afresh(
    tmp_path, prepared, capsys
):
    data, split = prepared
    out, marker = tmp_path / "victim", tmp_path / "pwned"
    (out / ".checkpoint").mkdir(parents=True)
    _crafted(out / ".checkpoint" / "last.pt", marker)
    assert cli.main(train_argv(data, split, tiny_spec(epochs=1), out)) == 0
    err = capsys.readouterr().err
    assert "ignoring unreadable checkpoint" in err and "resuming" not in err
    assert not marker.exists() and (out / "model.pt").exists()


def test_the_package_deserialises_only_through_the_safe_readers():
    """No torch.load / pickle / np.load(allow_pickle=True) outside segmia.io's checked readers."""
    offenders = []
    for path in sorted((REPO / "workflow" / "segmia").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            unsafe = (
                name.endswith(("pickle.load", "pickle.loads", "dill.load", "joblib.load"))
                or (name.endswith("torch.load") and keywords.get("weights_only") != "True")
                or (
                    name.endswith(("np.load", "numpy.load"))
                    and keywords.get("allow_pickle") != "False"
                )
            )
            if unsafe:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


# --- corrupt prepared data (the split step is the first to read it) -------------------------------


def _corrupt(data: Path, how: str) -> str:
    """Damage the prepared dataset ``data``; return the file name the error must show."""
    if how == "truncated_images":
        raw = (data / "images.npy").read_bytes()
        (data / "images.npy").write_bytes(raw[: len(raw) // 2])
        return "images.npy"
    if how == "truncated_masks_header":
        (data / "masks.npy").write_bytes((data / "masks.npy").read_bytes()[:40])
        return "masks.npy"
    if how == "labels_outside_the_class_set":
        masks = np.load(data / "masks.npy")
        masks[3, 0, 0] = 7
        np.save(data / "masks.npy", masks)
        return "masks.npy"
    if how == "index_shorter_than_arrays":
        index = pd.read_csv(data / "index.csv")
        index.iloc[:-2].to_csv(data / "index.csv", index=False)
        return "index.csv"
    if how == "index_without_group":
        pd.read_csv(data / "index.csv")[["sample_id"]].to_csv(data / "index.csv", index=False)
        return "index.csv"
    if how == "images_and_masks_disagree":
        np.save(data / "masks.npy", np.load(data / "masks.npy")[:-1])
        return "masks.npy"
    if how == "meta_cut_short":
        (data / "meta.json").write_text((data / "meta.json").read_text()[:20])
        return "meta.json"
    raise AssertionError(how)


CORRUPTIONS = [
    "truncated_images",
    "truncated_masks_header",
    "labels_outside_the_class_set",
    "index_shorter_than_arrays",
    "index_without_group",
    "images_and_masks_disagree",
    "meta_cut_short",
]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_split_detects_corrupt_prepared_data_naming_the_file(tmp_path, prepared, how):
    data, _ = prepared
    name = _corrupt(data, how)
    with pytest.raises(DataError, match=name):
        load_prepared(data)
    proc = run_segmia(
        "split",
        "--data",
        str(data),
        "--params",
        json.dumps(SIZES),
        "--seed",
        "0",
        "--out",
        str(tmp_path / "s0.csv"),
        check=False,
    )
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr, "split")
    assert f"{data}/{name}" in line or (f"{data}:" in line and name in line), line
    assert not (tmp_path / "s0.csv").exists()


def test_oom_hints_cover_each_step_with_a_batch_size_key():
    """The advice names config keys that exist."""
    from segmia.config import schema

    recipe = schema()["$defs"]
    assert "batch_size" in recipe["training"]["properties"]
    assert "batch_size" in recipe["attack_recipe"]["properties"]
    assert set(cli.OOM_HINTS) <= {"train", "fit-attack"}


# --- corrupt raw files (the prepare step is the first to read them) --------------------------------


def _raw_tree(source: str, tmp_path: Path) -> Path:
    from upstream import cityscapes_trees, kvasir_tree, liver_tree, write_tree

    if source == "kvasir":
        return write_tree(tmp_path / "raw", kvasir_tree())
    if source == "liver":
        return write_tree(tmp_path / "raw", liver_tree())
    trees = cityscapes_trees()
    return write_tree(
        tmp_path / "raw",
        {**trees["leftImg8bit_trainvaltest.zip"], **trees["gtFine_trainvaltest.zip"]},
    )


RAW_CORRUPTIONS = {
    # source, file, damage
    "truncated_jpeg_image": ("kvasir", "kvasir-seg/images/cju0002abc.jpg", "truncate"),
    "garbage_jpeg_mask": ("kvasir", "kvasir-seg/masks/cju0001abc.jpg", "garbage"),
    "truncated_png_image": (
        "cityscapes",
        "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png",
        "truncate",
    ),
    "truncated_png_labels": (
        "cityscapes",
        "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png",
        "truncate",
    ),
    "garbage_nifti_image": ("liver", "Task03_Liver/imagesTr/liver_2.nii.gz", "garbage"),
    "truncated_nifti_labels": ("liver", "Task03_Liver/labelsTr/liver_0.nii.gz", "truncate"),
}


@pytest.mark.parametrize("case", sorted(RAW_CORRUPTIONS))
def test_prepare_names_a_corrupt_raw_file_in_one_paragraph(tmp_path, case):
    source, name, damage = RAW_CORRUPTIONS[case]
    raw = _raw_tree(source, tmp_path)
    path = raw / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 64)
    out = tmp_path / "prepared"
    proc = run_segmia(
        "prepare",
        "--source",
        source,
        "--raw",
        str(raw),
        "--params",
        json.dumps({"height": 16, "width": 16} if source != "cityscapes" else {"height": 8}),
        "--out",
        str(out),
        check=False,
    )
    assert proc.returncode == 1
    line = _one_error_line(proc.stderr, "prepare")
    assert Path(name).name in line, line
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-prepared


def test_failure_report_names_each_failed_jobs_log_and_its_last_lines(tmp_path):
    from segmia.logs import failed_jobs, failure_report

    job_log = tmp_path / "fit.log"
    job_log.write_text("12:00:00 INFO epoch 1\nsegmia: the shadow query is missing; rerun query.\n")
    main = tmp_path / "snakemake.log"
    main.write_text(
        "Error in rule fit_attack:\n    message: None\n    jobid: 3\n"
        f"    log: {job_log} (check log file(s) for error details)\n    shell:\n        x\n"
        "Error in rule split:\n    jobid: 4\n    shell:\n        y\n"
    )
    assert failed_jobs(main.read_text()) == [("fit_attack", [str(job_log)]), ("split", [])]
    report = failure_report(str(main))
    assert "segmia: 2 job(s) failed" in report
    assert f"rule fit_attack: log {job_log}" in report
    assert "| segmia: the shadow query is missing; rerun query." in report
    assert "rule split: log (no log file)" in report
    assert failure_report([str(main)]) == report  # Snakemake 9 passes a list of log files
    assert failure_report(None) == "" and failure_report([]) == ""
