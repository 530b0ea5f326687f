#!/usr/bin/env python
"""Benchmarks of the segmia pipeline on whatever device is present (CUDA when visible, else CPU).

    python benchmarks/run.py --quick          # CPU-sized: batch 2, few steps (about 15 min on 2 cores)
    python benchmarks/run.py                  # full: the paper's batch sizes, more steps
    python benchmarks/run.py --only extract   # one group (train, dp, extract, query, attack, demo)
    python benchmarks/run.py --demo           # also time the whole demo pipeline (minutes)

Groups (one CSV row per measurement; throughput = median images/s over ``--repeats``):
- ``train`` / ``dp_train``: one training step of the pipeline (``models.train.fit``'s loop body:
  uint8 arrays gathered by index, autocast and channels-last where the pipeline uses them, Dice
  loss, NAdam) for the paper's smp U-Nets and the demo's MONAI U-Nets at the paper's shapes;
  DP-SGD through ``models.private.make_private`` for every Opacus grad-sample mode.
- ``extract``: ``attacks.outputs.predict_logits`` + per-image losses and cross-entropy maps on a
  memory-mapped uint8 array, at several batch sizes and precision / memory-format settings, and
  ``extract_bs1``: a batch-size-1 loop like the original code's (``torch.no_grad``, one image,
  ``loss.item()`` per image). The settings are measured in interleaved rounds (fair under load).
- ``query``: the whole ``segmia query`` step (subprocess) on a 5-class 256x512 dataset: wall time
  and its peak RSS.
- ``attack_train`` / ``attack_score``: the Type-I/II classifiers (ResNet-34, small CNN).
- ``demo``: ``snakemake --cores all --configfile config/demo.yaml`` into a temporary results
  directory: wall time, jobs, the largest job's peak RSS.

Peak memory per measurement: each case runs in a fresh process; its host RSS high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the model is built, so it includes the
~1 GB of Python, torch and the model) and ``torch.cuda.max_memory_allocated`` on a GPU.
Writes ``benchmarks/results/<device>-<date>.{csv,md}`` (or ``--out STEM``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import datetime
import gc
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from segmia.cost import FIELDS, PAPER_SHAPES, arch_key  # noqa: E402
from segmia.data.prepared import output_channels  # noqa: E402

warnings.filterwarnings("ignore")

#: (channels, height, width, output channels) of the paper's datasets
SHAPES = {name: (c, h, w, output_channels(k)) for name, (c, h, w, k) in PAPER_SHAPES.items()}
#: the demo's own shapes, for the MONAI U-Nets
DEMO_SHAPES = {"synthetic_ct": (1, 64, 64, 1), "synthetic_scenes": (3, 48, 96, 5)}
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")


# --- helpers ------------------------------------------------------------------------------------


def architectures() -> dict[str, dict]:
    """The paper's (config.yaml) and the demo's (demo.yaml) architectures, without downloads."""
    out = {}
    for name in ("config.yaml", "demo.yaml"):
        for arch, spec in yaml.safe_load((REPO / "config" / name).read_text())[
            "architectures"
        ].items():
            out[arch] = {**spec, "encoder_weights": None} if spec["family"] == "smp_unet" else spec
    return out


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def reset_peak(device: torch.device) -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # return freed heap pages to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):  # Linux: reset this process' RSS high-water mark
        Path("/proc/self/clear_refs").write_text("5")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: torch.device) -> tuple[float, float | None]:
    """(peak host RSS MB since ``reset_peak``, peak GPU memory MB or None)."""
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    if rss is None:  # no procfs: the process-lifetime peak (kB on Linux, bytes on macOS)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
            1024 * (1024 if sys.platform == "darwin" else 1)
        )
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return rss, gpu


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, images: int, device: torch.device) -> float:
    """Images per second of one call of ``step`` (which processes ``images`` images)."""
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return images / (time.perf_counter() - start)


class Bench:
    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.rows: list[dict] = []
        self.meta = {
            "device": device.type,
            "device_name": (
                torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else f"{cpu_name()} ({os.cpu_count()} cores)"
            ),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            "mode": "quick" if args.quick else "full",
        }

    def log(self, row: dict) -> None:
        rate = row.get("images_per_s")
        text = f"{rate:9.2f} img/s" if isinstance(rate, float) else f"{'-':>15}"
        print(
            f"{row['group']:<13} {row.get('arch', ''):<13} {row.get('dataset', ''):<16} "
            f"bs {row.get('batch_size', '')!s:<3} {row.get('setting', ''):<18} {text} "
            f"rss {row.get('peak_rss_mb', 0):7.0f} MB {row.get('note', '')}",
            flush=True,
        )

    def rates(self, step, batch: int) -> list[float]:
        """Images/s of ``step`` (one batch): ``--warmup`` untimed calls, then per repeat the
        median of ``--steps`` timed calls."""
        for _ in range(self.args.warmup):
            step()
        return [
            statistics.median(timed(step, batch, self.device) for _ in range(self.args.steps))
            for _ in range(self.args.repeats)
        ]

    def add(self, rates: list[float], images: int, **fields) -> dict:
        rss, gpu = peak_memory(self.device)
        row = {
            **dict.fromkeys(FIELDS, ""),
            **self.meta,
            "pipeline": 1,
            "images_per_s": round(statistics.median(rates), 4) if rates else "",
            "images_per_s_min": round(min(rates), 4) if rates else "",
            "images_per_s_max": round(max(rates), 4) if rates else "",
            "repeats": len(rates),
            "images_per_repeat": images,
            "peak_rss_mb": round(rss, 1),
            "peak_gpu_mb": "" if gpu is None else round(gpu, 1),
            **fields,
        }
        self.rows.append(row)
        self.log(row)
        return row


def forward_gflops(model: torch.nn.Module, shape: tuple) -> float:
    """Forward FLOPs of one image (C x H x W), counted by torch on the CPU (train ~ 3x)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).cpu().eval()
    probe = getattr(probe, "_module", probe)  # unwrap Opacus
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.rand(1, *shape[:3]))
    return round(counter.get_total_flops() / 1e9, 4)


def _child(args, device_type: str, fn, params: tuple) -> list[dict]:
    torch.set_num_threads(args.threads)
    bench = Bench(args, torch.device(device_type))
    fn(bench, *params)
    return bench.rows


def isolated(bench: Bench, fn, *params) -> None:
    """Run ``fn(bench, *params)`` in a fresh process (clean peak-memory figures per case), or in
    this one with ``--in-process``."""
    if bench.args.in_process:
        fn(bench, *params)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        rows = pool.submit(_child, bench.args, bench.device.type, fn, params).result()
    bench.rows.extend(rows)


def shape_fields(dataset: str, shape: tuple) -> dict:
    c, h, w, k = shape
    return {"dataset": dataset, "in_channels": c, "height": h, "width": w, "out_channels": k}


def random_data(n: int, shape: tuple, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    c, h, w, k = shape
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    masks = rng.integers(0, 2 if k == 1 else k, size=(n, h, w), dtype=np.uint8)
    return images, masks


# --- training -----------------------------------------------------------------------------------


def train_case(
    bench: Bench,
    name: str,
    arch: dict,
    dataset: str,
    shape: tuple,
    mode: str | None,
    fast: bool = True,
):
    """One training step of ``models.train.fit`` (plain, or DP-SGD with grad-sample ``mode``);
    ``fast``: the pipeline's AMP and channels-last on a GPU (off: float32, contiguous)."""
    from segmia.models.losses import dice_loss, per_image_loss
    from segmia.models.registry import build_model
    from segmia.models.train import Arrays, Recipe, Task, make_optimizer
    from segmia.runtime import autocast

    args, device = bench.args, bench.device
    batch = args.batch_size
    recipe = Recipe(epochs=70, batch_size=batch, lr=1e-4)
    task = Task(2 if shape[3] == 1 else shape[3], None)
    torch.manual_seed(0)
    model = build_model(arch, shape[0], shape[3], private=mode is not None).to(device)
    gflops = forward_gflops(model, shape)
    reset_peak(device)
    channels_last = device.type == "cuda" and recipe.channels_last and fast
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer("nadam", model.parameters(), recipe.lr)
    loss_fn = dice_loss(task.num_classes, task.ignore_index)
    if mode is not None:
        from segmia.models.private import make_private

        spec = {"epsilon": 8.5, "delta": 1e-3, "max_grad_norm": 2.0, "grad_sample_mode": mode}
        loss_fn = per_image_loss(task)
        try:
            private = make_private(model, optimizer, 500, recipe, spec, criterion=loss_fn)
        except TypeError:  # make_private without ghost clipping support
            if mode == "ghost":
                raise NotImplementedError("make_private has no criterion (ghost)") from None
            private = make_private(model, optimizer, 500, recipe, spec)
        model, optimizer = private[0], private[1]
        if len(private) > 4 and private[4] is not None:
            loss_fn = private[4]
    images, masks = random_data(batch * 4, shape)
    data = Arrays.from_numpy(images, masks, np.arange(len(images)), device)
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randperm(len(data), generator=gen)[:batch]
        x, y = data.batch(idx, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, recipe.amp and fast):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        float(loss.detach())

    model.train()
    rates = bench.rates(step, batch)
    setting = mode or ("amp+cl" if channels_last else "fp32")
    return bench.add(
        rates,
        batch * args.steps,
        gflops_per_image=gflops,
        group="dp_train" if mode else "train",
        arch=name,
        arch_key=arch_key(arch),
        batch_size=batch,
        setting=setting,
        pipeline=int(fast),
        **shape_fields(dataset, shape),
    )


def run_train(bench: Bench, private: bool) -> None:
    archs = architectures()
    args = bench.args
    modes = args.grad_sample_modes if private else [None]
    # on a GPU plain training is measured with the pipeline's AMP + channels-last and without
    fasts = (True, False) if bench.device.type == "cuda" and not private else (True,)
    for dataset, shape in SHAPES.items():
        for name, arch in archs.items():
            if name not in args.archs:
                continue
            for mode, fast in ((m, f) for m in modes for f in fasts):
                if args.quick and private and mode != "hooks" and dataset != "liver":
                    continue  # the mode comparison runs at one shape in quick mode
                try:
                    isolated(bench, train_case, name, arch, dataset, shape, mode, fast)
                except Exception as err:  # a mode that fails on a model, out of memory
                    bench.add(
                        [],
                        0,
                        group="dp_train" if private else "train",
                        arch=name,
                        arch_key=arch_key(arch),
                        batch_size=args.batch_size,
                        setting=mode or "",
                        note=f"failed: {str(err).splitlines()[0][:120]}",
                        **shape_fields(dataset, shape),
                    )
    if not private:
        for dataset, shape in DEMO_SHAPES.items():
            for name, arch in archs.items():
                if arch["family"] == "monai_unet" and name in args.archs:
                    isolated(bench, train_case, name, arch, dataset, shape, None)


# --- output / loss-map extraction ---------------------------------------------------------------


def extract_settings(
    device: torch.device, options: set[str], compile_too: bool
) -> list[tuple[str, dict]]:
    """(setting name, predict_logits keyword arguments); the first is the pipeline's path."""
    import inspect

    from segmia.attacks.outputs import predict_logits

    params = inspect.signature(predict_logits).parameters
    compile_too = compile_too and "compile" in options and "compile" in params
    if device.type == "cuda":
        settings = [("amp+cl", {}), ("fp32", {"amp": False, "channels_last": False})]
        if compile_too:
            settings.append(("compile+amp+cl", {"compile": True}))
        return settings
    settings = [("fp32", {})]
    if "on_cpu" in params:
        if "cl" in options:
            settings.append(("cl", {"amp": False, "on_cpu": True}))
        if "bf16" in options:
            settings.append(("bf16", {"channels_last": False, "on_cpu": True}))
            settings.append(("bf16+cl", {"on_cpu": True}))
    if compile_too:
        settings.append(("compile", {"compile": True}))
        if "on_cpu" in params and "bf16" in options:
            settings.append(
                ("compile+bf16", {"compile": True, "channels_last": False, "on_cpu": True})
            )
    return settings


def run_extract(bench: Bench) -> None:
    """Batched ``predict_logits`` + per-image losses against a batch-size-1 loop (interleaved)."""
    args = bench.args
    archs = architectures()
    cases = [("liver", n) for n in ("resnet34", "mobilenet_v2", "vgg11")]
    if not args.quick:
        cases += [("kvasir", "resnet34"), ("cityscapes", "resnet34")]
    cases += [("liver", n) for n, a in archs.items() if a["family"] == "monai_unet"]
    tmp = Path(tempfile.mkdtemp(prefix="segmia-bench-"))
    try:
        for dataset, name in cases:
            if name in args.archs:
                isolated(bench, extract_case, dataset, name, archs[name], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_case(bench: Bench, dataset: str, name: str, arch: dict, tmp: Path) -> None:
    from segmia.attacks.outputs import per_image_stats, predict_logits
    from segmia.models.losses import cross_entropy_map, dice_loss, probabilities
    from segmia.models.registry import build_model

    args, device = bench.args, bench.device
    shape = SHAPES[dataset]
    n = args.extract_images
    images, masks = random_data(n, shape)
    np.save(tmp / "images.npy", images)
    images = np.load(tmp / "images.npy", mmap_mode="r")  # as the pipeline reads them
    rows = np.arange(n)
    torch.manual_seed(0)
    model = build_model(arch, shape[0], shape[3]).to(device).eval()
    gflops = forward_gflops(model, shape)
    out = np.lib.format.open_memmap(
        tmp / "logits.npy", mode="w+", dtype=np.float16, shape=(n, shape[3], *shape[1:3])
    )
    loss_fn = dice_loss(2 if shape[3] == 1 else shape[3], None)

    def batched(bs, kwargs):
        def run():
            predict_logits(model, images, rows, bs, device, out, **kwargs)
            per_image_stats(out, masks, None, device=device)

        return run

    def bs1_loop():
        # the original code: DataLoader(batch_size=1), no_grad, fp32, loss.item() per image
        model.eval()
        for i in rows:
            x = torch.from_numpy(np.array(images[i : i + 1])).to(device).float() / 255.0
            y = torch.from_numpy(masks[i : i + 1]).to(device).long()
            with torch.no_grad():
                pred = model(x)
            loss_fn(pred, y).item()
            cross_entropy_map(probabilities(pred), y, None).sum().item()
            out[i] = pred[0].cpu().numpy().astype(np.float16)

    plans = [("bs1-loop", 1, bs1_loop)]
    settings = extract_settings(device, set(args.extract_settings), name in args.compile_archs)
    for bs in args.extract_batch_sizes:
        if bs > n:
            continue
        for setting, kwargs in settings:
            if bs != max(args.extract_batch_sizes) and setting != settings[0][0]:
                continue  # other settings only at the largest batch
            plans.append((setting, bs, batched(bs, kwargs)))
    warmup = []
    for _, _, run in plans:  # warm-up (and compilation)
        start = time.perf_counter()
        run()
        warmup.append(time.perf_counter() - start)
    rates: dict[int, list[float]] = {i: [] for i in range(len(plans))}
    peaks: dict[int, tuple] = {}
    for _ in range(args.repeats):  # interleaved rounds: every plan sees the same load
        for i, (_, _, run) in enumerate(plans):
            reset_peak(device)
            rates[i].append(timed(run, n, device))
            peaks[i] = peak_memory(device)
    base = statistics.median(rates[0])
    for i, (setting, bs, _) in enumerate(plans):
        rss, gpu = peaks[i]
        row = bench.add(
            rates[i],
            n,
            group="extract_bs1" if setting == "bs1-loop" else "extract",
            arch=name,
            arch_key=arch_key(arch),
            batch_size=bs,
            setting=setting,
            pipeline=int(setting == settings[0][0]),
            note=f"{statistics.median(rates[i]) / base:.1f}x the bs-1 loop"
            + (f"; first call incl. compilation {warmup[i]:.0f} s" if "compile" in setting else ""),
            gflops_per_image=gflops,
            **shape_fields(dataset, shape),
        )
        row["peak_rss_mb"] = round(rss, 1)
        row["peak_gpu_mb"] = "" if gpu is None else round(gpu, 1)


# --- the query step end to end (wall time and peak RSS of the process) --------------------------


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the child's largest process, return code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=False
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(err[-3000:], file=sys.stderr)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def run_query(bench: Bench) -> None:
    """``segmia query`` on a 5-class 256x512 dataset (Cityscapes-sized maps) with a tiny U-Net."""
    import json

    import pandas as pd
    from segmia.data.prepared import write_prepared
    from segmia.data.split import make_split
    from segmia.io import write_csv, write_json, write_torch
    from segmia.models.registry import build_model

    args = bench.args
    k = args.query_mia
    shape = (3, 256, 512, 5)
    n = 4 * k + 16
    arch = {"family": "monai_unet", "channels": [4, 8], "strides": [2]}
    tmp = Path(tempfile.mkdtemp(prefix="segmia-bench-query-"))
    try:
        images, masks = random_data(n, shape)
        index = pd.DataFrame({"sample_id": [f"s{i:05d}" for i in range(n)]})
        index["group"] = index["sample_id"]
        meta = {"name": "bench", "source": "bench", "num_classes": 5, "ignore_index": None}
        write_prepared(tmp / "data", images, masks, index, meta)
        sizes = {
            "victim_pool": n // 2,
            "shadow_pool": n // 2,
            "train_size": k,
            "val_size": 4,
            "mia_size": k,
        }
        write_csv(tmp / "split.csv", make_split(index, sizes, 0))
        model_dir = tmp / "model"
        model = build_model(arch, 3, 5)
        write_torch(model_dir / "model.pt", model.state_dict())
        write_json(
            model_dir / "spec.json",
            {"arch": arch, "variant": {"type": "none"}, "training": {"amp": True}},
        )
        cmd = [
            sys.executable,
            "-m",
            "segmia",
            "query",
            "--model",
            str(model_dir),
            "--data",
            str(tmp / "data"),
            "--split",
            str(tmp / "split.csv"),
            "--pool",
            "victim",
            "--train-size",
            str(k),
            "--sizes",
            json.dumps(sizes),
            "--out",
            str(tmp / "query"),
            "--threads",
            str(torch.get_num_threads()),
            "--device",
            bench.device.type,
        ]
        path = [str(REPO / "workflow"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        walls, peaks = [], []
        for _ in range(args.repeats):
            shutil.rmtree(tmp / "query", ignore_errors=True)
            wall, rss, rc = run_child(cmd, env)
            if rc:
                raise RuntimeError(f"segmia query failed ({rc})")
            walls.append(wall)
            peaks.append(rss)
        logits_mb = (tmp / "query" / "logits.npy").stat().st_size / 2**20
        row = bench.add(
            [2 * k / w for w in walls],
            2 * k,
            group="query",
            arch="monai-tiny",
            arch_key=arch_key(arch),
            batch_size=64,
            setting="segmia query",
            pipeline=0,
            note=f"wall {statistics.median(walls):.1f} s, logits.npy {logits_mb:.0f} MB",
            **shape_fields("5-class 256x512", shape),
        )
        row["peak_rss_mb"] = round(max(peaks), 1)
        row["peak_gpu_mb"] = ""
        print(f"{'':13} peak RSS of the query process: {max(peaks):.0f} MB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- a job's fixed cost: interpreter, imports, device, model --------------------------------------

#: per kind of job: the module its CLI step imports, and the network it builds (None: no network).
#: The probe times what every such job pays before its first image. ``eval_attack`` stands for an
#: ``evaluate`` job with a learned attack, ``threshold_attack`` for one of threshold attacks alone
#: (segmia.cost.STARTUP_RULES); ``train`` also queries, after training, with the model it built.
STARTUP_STEPS = {
    "train": ("segmia.models.job", "segmentation"),
    "query": ("segmia.attacks.outputs", "segmentation"),
    "fit_attack": ("segmia.attacks.job", "attack"),
    "eval_attack": ("segmia.attacks.job", "attack"),
    "threshold_attack": ("segmia.attacks.job", None),
    "table": ("segmia.report.studies", None),
}

STARTUP_PROBE = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import importlib
import segmia.cli
t1 = time.perf_counter()
importlib.import_module(sys.argv[2])
t2 = time.perf_counter()
out = {"cli": t1 - t0, "imports": t2 - t1, "device": 0.0, "model": 0.0}
if sys.argv[4] != "none":
    import torch
    from segmia.runtime import autocast, setup
    device = setup(sys.argv[3], 1, deterministic=False)
    (torch.zeros(1, device=device) + 1).cpu()
    t3 = time.perf_counter()
    out["device"] = t3 - t2
    c, h, w, k = json.loads(sys.argv[5])
    if sys.argv[4] == "attack":
        from segmia.attacks.classifier import build_classifier
        model = build_classifier({"classifier": "resnet34"}, c)
    else:
        from segmia.models.registry import build_model
        model = build_model(json.loads(sys.argv[6]), c, k)
    model = model.to(device).eval()
    with torch.no_grad(), autocast(device):
        model(torch.rand(2, c, h, w, device=device)).float().cpu()
    out["model"] = time.perf_counter() - t3
print(json.dumps(out))
"""


def run_startup(bench: Bench) -> None:
    """Each rule's fixed cost per job, in a fresh interpreter: start, ``segmia.cli``, the step's
    imports, device initialisation (CUDA context, first kernel), model build + first forward."""
    import json

    arch = {**architectures()["resnet34"]}
    c, h, w, k = SHAPES["liver"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for rule, (module, network) in STARTUP_STEPS.items():
        phases: list[dict] = []
        walls = []
        for _ in range(bench.args.repeats):
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    STARTUP_PROBE,
                    str(REPO / "workflow"),
                    module,
                    bench.device.type,
                    network or "none",
                    json.dumps([c, h, w, k]),
                    json.dumps(arch),
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            walls.append(time.perf_counter() - start)
            if proc.returncode:
                raise RuntimeError(f"startup probe of {rule} failed: {proc.stderr[-2000:]}")
            phases.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        wall = statistics.median(walls)
        med = {key: statistics.median(ph[key] for ph in phases) for key in phases[0]}
        interpreter = max(0.0, wall - sum(med.values()))
        bench.add(
            [],
            0,
            group="startup",
            arch={"segmentation": "resnet34", "attack": "resnet34-attack"}.get(network, ""),
            arch_key=arch_key(arch) if network == "segmentation" else "",
            setting=rule,
            pipeline=0,
            startup_s=round(wall, 3),
            note=(
                f"{wall:.2f} s per job: interpreter {interpreter:.2f}, segmia.cli "
                f"{med['cli']:.2f}, imports {med['imports']:.2f}, device {med['device']:.2f}, "
                f"model + first forward {med['model']:.2f}"
            ),
        )
    run_startup_warm(bench)


def run_startup_warm(bench: Bench) -> None:
    """A job's start-up through the warm worker of a local CPU run (segmia.warm) against a fresh
    interpreter: ``segmia check-config`` (a step of no work) both ways. CPU on Linux only: with a
    GPU the Snakefile starts no worker."""
    import tempfile

    if bench.device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    env.pop("SEGMIA_WARM", None)
    step = [sys.executable, "-m", "segmia", "check-config", str(REPO / "config" / "demo.yaml")]
    with tempfile.TemporaryDirectory(prefix="segmia-bench-") as tmp:
        path = Path(tmp) / "w.sock"
        worker = subprocess.Popen(
            [sys.executable, "-m", "segmia", "warm-worker", "--socket", str(path)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            started = time.perf_counter()
            while not path.exists():
                if worker.poll() is not None or time.perf_counter() - started > 120:
                    raise RuntimeError("the warm worker did not start")
                time.sleep(0.05)
            ready = time.perf_counter() - started
            for setting, extra in (("fresh", {}), ("warm", {"SEGMIA_WARM": str(path)})):
                walls = []
                for _ in range(bench.args.repeats):
                    t0 = time.perf_counter()
                    subprocess.run(step, env={**env, **extra}, check=True, capture_output=True)
                    walls.append(time.perf_counter() - t0)
                wall = statistics.median(walls)
                bench.add(
                    [],
                    0,
                    group="startup_warm",
                    setting=setting,
                    pipeline=0,
                    startup_s=round(wall, 3),
                    note=f"{wall:.3f} s per job ({setting})"
                    + (f"; the worker imports in {ready:.1f} s once per run" if extra else ""),
                )
        finally:
            worker.terminate()
            worker.wait(timeout=30)


# --- attack classifiers -------------------------------------------------------------------------


def run_attack(bench: Bench) -> None:
    cases = [
        ("resnet34", "liver", 1, 4),
        ("resnet34", "liver", 2, 4),
        ("small_cnn", "liver", 1, 16),
        ("small_cnn", "liver", 2, 16),
        ("resnet34", "cityscapes", 19, 4),
    ]
    if not bench.args.quick:
        cases += [("resnet34", "kvasir", 2, 4), ("small_cnn", "cityscapes", 19, 16)]
    for case in cases:
        isolated(bench, attack_case, *case)


def attack_case(bench: Bench, classifier: str, dataset: str, channels: int, batch: int) -> None:
    """Training step (NAdam, BCE, autocast as ``train_attack``) and scoring of a classifier."""
    from segmia.attacks.classifier import build_classifier
    from segmia.runtime import autocast

    args, device = bench.args, bench.device
    _, h, w, _ = SHAPES[dataset]
    fields = {
        "arch": classifier,
        "arch_key": classifier,
        "setting": "type1" if channels in (1, 19) else "type2",
        "dataset": dataset,
        "in_channels": channels,
        "height": h,
        "width": w,
    }
    torch.manual_seed(0)
    model = build_classifier({"classifier": classifier, "width": 16}, channels).to(device)
    fields["gflops_per_image"] = forward_gflops(model, (channels, h, w))
    reset_peak(device)
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.rand(batch, channels, h, w, device=device)
    y = (torch.rand(batch, device=device) > 0.5).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        optimizer.step()
        float(loss.detach())

    model.train()
    rates = bench.rates(step, batch)
    bench.add(rates, batch * args.steps, group="attack_train", batch_size=batch, **fields)

    score_batch = 32 if args.quick else 64
    xs = torch.rand(score_batch, channels, h, w, device=device)

    @torch.inference_mode()
    def score():
        with autocast(device):
            torch.sigmoid(model(xs).float()).cpu()

    model.eval()
    reset_peak(device)
    score()
    rates = [timed(score, score_batch, device) for _ in range(args.repeats)]
    bench.add(rates, score_batch, group="attack_score", batch_size=score_batch, **fields)


# --- the whole demo -----------------------------------------------------------------------------


def run_demo(bench: Bench) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="segmia-bench-demo-"))
    try:
        cmd = [
            str(Path(sys.executable).parent / "snakemake"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp),
            "--cores",
            "all",
            "--configfile",
            str(REPO / "config" / "demo.yaml"),
            "--config",
            f"results={tmp / 'results'}",
            f"resources={tmp / 'resources'}",
            "--quiet",
        ]
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO / "workflow"),
        }
        wall, rss, rc = run_child(cmd, env)
        jobs = list((tmp / "results" / "benchmarks").rglob("*.tsv"))
        job_seconds, job_rss = 0.0, 0.0
        for path in jobs:
            with path.open() as fh:
                row = next(csv.DictReader(fh, delimiter="\t"))
            job_seconds += float(row["s"])
            job_rss = max(job_rss, float(row["max_rss"]) if row["max_rss"] != "NA" else 0.0)
        row = bench.add(
            [],
            0,
            group="demo",
            arch="demo.yaml",
            setting="snakemake --cores all",
            pipeline=0,
            note=(
                f"{'ok' if rc == 0 else f'FAILED rc={rc}'}: wall {wall:.0f} s, {len(jobs)} jobs, "
                f"sum of job times {job_seconds:.0f} s, largest job RSS {job_rss:.0f} MB"
            ),
        )
        row["peak_rss_mb"] = round(max(rss, job_rss), 1)
        row["images_per_s"] = ""
        row["seconds"] = round(wall, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- output -------------------------------------------------------------------------------------


GROUP_ROWS = {
    "startup": ("startup", "startup_warm"),
    "train": ("train",),
    "dp": ("dp_train",),
    "extract": ("extract", "extract_bs1"),
    "query": ("query",),
    "attack": ("attack_train", "attack_score"),
    "demo": ("demo",),
}


def merge_existing(bench: Bench, stem: Path, ran: set[str]) -> None:
    """Keep an existing CSV's rows of the groups not run now (``--only`` reruns a group)."""
    path = stem.with_suffix(".csv")
    if not path.exists():
        return
    replaced = {g for name in ran for g in GROUP_ROWS[name]}
    with path.open(newline="") as fh:
        kept = [r for r in csv.DictReader(fh) if r["group"] not in replaced]
    for row in kept:
        for key in ("images_per_s", "images_per_s_min", "images_per_s_max"):
            row[key] = float(row[key]) if row[key] not in ("", None) else ""
    bench.rows = kept + bench.rows


def write(bench: Bench, stem: Path, load: tuple, quiet: bool = False) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    with stem.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(bench.rows)
    m = bench.meta
    lines = [
        f"# segmia benchmarks: {m['device']} ({m['device_name']}), {m['date']}",
        "",
        f"torch {m['torch']}, {m['threads']} threads, {m['mode']} mode (batch {bench.args.batch_size} "
        f"for segmentation training, {bench.args.steps} steps x {bench.args.repeats} repeats; "
        f"medians). Load average before / after: {load[0]:.1f} / {os.getloadavg()[0]:.1f}.",
        "",
    ]
    if m["device"] == "cpu":
        lines += ["**CPU numbers.** Not GPU throughput.", ""]
    lines += [
        "| group | arch | shape (C x H x W -> K) | batch | setting | images/s (min-max) | peak RSS MB | peak GPU MB | note |",
        "|---|---|---|---:|---|---|---:|---:|---|",
    ]
    for r in bench.rows:
        shape = (
            f"{r['in_channels']}x{r['height']}x{r['width']} -> {r['out_channels']}"
            if r["height"] != ""
            else ""
        )
        rate = (
            f"{r['images_per_s']:.2f} ({r['images_per_s_min']:.2f}-{r['images_per_s_max']:.2f})"
            if r["images_per_s"] != ""
            else "-"
        )
        lines.append(
            f"| {r['group']} | {r['arch']} | {r['dataset']} {shape} | {r['batch_size']} | "
            f"{r['setting']} | {rate} | {r['peak_rss_mb']} | {r['peak_gpu_mb']} | {r['note']} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if not quiet:
        print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> int:
    groups = ("startup", "train", "dp", "extract", "query", "attack", "demo")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized: batch 2, fewer steps")
    p.add_argument("--only", nargs="+", choices=groups, help="run these groups only")
    p.add_argument("--demo", action="store_true", help="also time the whole demo (minutes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: CPU numbers are per core, and a shared machine's "
        "load does not stall a multi-threaded step)",
    )
    p.add_argument("--archs", nargs="+", help="architecture names (default: all of both configs)")
    p.add_argument("--batch-size", type=int, help="segmentation training batch (quick 2, full 8)")
    p.add_argument("--steps", type=int, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, help="repeats (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--grad-sample-modes", nargs="+", default=list(GRAD_SAMPLE_MODES))
    p.add_argument("--extract-batch-sizes", nargs="+", type=int)
    p.add_argument(
        "--extract-settings",
        nargs="+",
        default=["cl", "bf16", "compile"],
        help="extra settings of the extraction benchmark (CPU: cl, bf16; compile)",
    )
    p.add_argument(
        "--compile-archs",
        nargs="+",
        default=["resnet34"],
        help="architectures whose extraction is also measured compiled (minutes on a CPU)",
    )
    p.add_argument("--extract-images", type=int, help="images per extraction measurement")
    p.add_argument("--query-mia", type=int, default=100, help="MIA members of the query case")
    p.add_argument(
        "--out", type=Path, help="output stem (default benchmarks/results/<device>-<date>)"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every case in this process (faster; peak memory then accumulates)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.batch_size = args.batch_size or (2 if quick else 8)
    args.steps = args.steps or (2 if quick else 5)
    args.repeats = args.repeats or 3
    args.extract_batch_sizes = args.extract_batch_sizes or ([8, 32] if quick else [8, 32, 64])
    args.extract_images = args.extract_images or max(args.extract_batch_sizes)
    args.archs = args.archs or list(architectures())
    torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bench = Bench(args, device)
    load = os.getloadavg()
    print(f"device {bench.meta['device_name']}, {args.threads} threads, load {load[0]:.1f}")
    run = set(args.only or [g for g in groups if g != "demo"]) | ({"demo"} if args.demo else set())
    stem = args.out or REPO / "benchmarks" / "results" / f"{device.type}-{bench.meta['date']}"
    steps = {  # cheapest and most used by `segmia estimate` first (a time limit keeps them)
        "startup": run_startup,
        "train": lambda b: run_train(b, private=False),
        "dp": lambda b: run_train(b, private=True),
        "extract": run_extract,
        "query": run_query,
        "attack": run_attack,
        "demo": run_demo,
    }
    # a time limit's SIGTERM ends the run through ``finally``: the groups measured so far are kept
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only:  # rerunning some groups: keep the existing CSV's rows of the others
        merge_existing(bench, stem, run)
    try:
        for name, step in steps.items():
            if name in run:
                step(bench)
                write(bench, stem, load, quiet=True)  # each finished group is on disk
    finally:
        if bench.rows:
            write(bench, stem, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
