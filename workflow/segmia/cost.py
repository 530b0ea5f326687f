"""What a configured reproduction costs: segmentation trainings and device-hours.

``count_trainings``: the segmentation models the DAG trains (each once, see ``plan``) against the
original code, which trains the models of every *cell* of a paper table anew: a victim (and its
distillation teacher) and a shadow, or K reference models for LiRA/RMIA. A cell is one (study
row, study column) of one table: a distinct (victim variant or release defence, victim
architecture, shadow architecture, training size, attack, seed) tuple of a study. Each attack is
its own table in the paper (tables 1-3 are Type-I, Type-II and global loss of the same grid), so
a grid of 3 x 3 architectures attacked three ways is 27 cells = 54 trainings per seed in the
original code, and 3 victims + 3 shadows = 6 trainings here. Cells of two studies that happen to
coincide count twice for the original code (it runs one script per table).

``estimate``: device-hours per study from measured throughput (``benchmarks/run.py`` CSV) x the
planned epochs and images. Work first needed by a study is charged to it, so the per-study rows
add up to the total. Approximations are listed in ``NOTES``.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import plan
from .data.prepared import output_channels
from .errors import SegmiaError

#: (channels, height, width, num_classes) of the paper's datasets after preparation
#: (docs/protocol.md, "Datasets")
PAPER_SHAPES = {
    "liver": (1, 256, 256, 2),
    "kvasir": (3, 256, 256, 2),
    "cityscapes": (3, 256, 512, 19),
}
#: (channels, num_classes) of the embedded synthetic sources
SYNTHETIC = {"synthetic_ct": (1, 2), "synthetic_scenes": (3, 5)}

NOTES = (
    "training = epochs x training images / training throughput (DP-SGD throughput for dp "
    "variants; crop training scaled by the crop's pixel fraction; distillation: the student "
    "trains on at most reference_size images, the teacher labels them once; min-max: the inner "
    "attack's epoch is counted as one extra forward pass over members + held-out images), plus "
    "one validation pass per epoch (a forward pass: a third of a plain training step)",
    "query = members + non-members of the MIA set through the model, with per-image losses (a "
    "LiRA/RMIA reference model: the reference universe, about 2N + validation + MIA-set size)",
    "attack fit = epochs x MIA set / classifier training throughput, plus scoring the shadow "
    "set; attack evaluation = (1 + last_k snapshots) scoring passes over the victim's MIA set; "
    "threshold attacks (global loss) cost nothing measurable",
    "a shape without its own benchmark row is scaled from the same architecture's nearest "
    "measured shape by pixel count",
    "start-up = each planned job's fixed cost (interpreter, imports, device initialisation, model "
    "build and first forward; the benchmark's startup rows) x the jobs of its rule: one per new "
    "model (training and its MIA-set query), per victim queried on the reference universe or "
    "with a trigger, per learned attack model, per evaluation group (every attack on one victim "
    "by one shadow under one release), per reference-attack victim, per table and per figure",
)
#: the benchmark's startup row (``setting``) that stands for each rule's jobs
STARTUP_RULES = {
    "train": "train",  # trains the model and queries its MIA set in the same process
    "query": "query",  # a victim on the reference universe, a poisoning study's triggered query
    "fit_attack": "fit_attack",
    "evaluate": "eval_attack",  # an evaluation group with a learned attack (its classifier)
    "evaluate_threshold": "threshold_attack",  # a group of threshold attacks alone
    "reference_attacks": "eval_attack",
    "report": "table",
}
#: benchmark groups an estimate can do without (their stage is then "not measured")
OPTIONAL_GROUPS = ("attack_train", "attack_score")


def dataset_shape(config: dict, name: str) -> tuple[int, int, int, int]:
    """(channels, height, width, model output channels) of a configured dataset."""
    ds = config["datasets"][name]
    source = ds["source"]
    if source in SYNTHETIC:
        channels, classes = SYNTHETIC[source]
        params = ds.get("synthetic", {})
        return (
            channels,
            int(params.get("height", 64)),
            int(params.get("width", 64)),
            output_channels(classes),
        )
    if source in PAPER_SHAPES:
        channels, height, width, classes = PAPER_SHAPES[source]
        size = ds.get("size") or ds.get("image_size")  # [height, width] where a config sets one
        if size:
            height, width = int(size[0]), int(size[1])
        return channels, height, width, output_channels(classes)
    raise SegmiaError(f"dataset {name!r}: no known image shape for source {source!r}")


def arch_key(arch: dict) -> str:
    """What determines an architecture's speed (not its weights): smp encoder, MONAI layout."""
    if arch["family"] == "smp_unet":
        return f"smp_unet:{arch['encoder']}"
    channels = "-".join(map(str, arch["channels"]))
    strides = "-".join(map(str, arch["strides"]))
    return (
        f"monai_unet:{channels}:s{strides}:r{arch.get('num_res_units', 0)}:"
        f"{arch.get('norm', 'batch')}"
    )


# --- trainings ---------------------------------------------------------------------------------


def cell(ev: plan.Evaluation) -> tuple:
    """One table cell: (victim variant or release defence, victim arch, shadow arch, training
    size, attack, seed, query trigger or None)."""
    release, query = plan.split_query(ev.release)
    row = ev.victim.variant if release == "none" else release
    return (row, ev.victim.arch, ev.shadow.arch, ev.victim.size, ev.attack, ev.seed, query)


def evaluation_models(config: dict, ev: plan.Evaluation) -> list[plan.Model]:
    """The segmentation models one evaluation needs: the victim (and its distillation teacher),
    and the shadow or the K reference models."""
    models = [ev.victim]
    if plan.variant_spec(config, ev.victim.variant)["type"] == "distillation":
        models.append(plan.teacher(ev.victim))
    if ev.shadow.role == "reference":
        models += plan.references(ev.shadow)
    else:
        models.append(ev.shadow)
    return models


def study_models(config: dict, name: str) -> list[plan.Model]:
    """The distinct segmentation models a study needs."""
    models: dict[plan.Model, None] = {}
    for ev in plan.study_evaluations(config, name):
        models.update(dict.fromkeys(evaluation_models(config, ev)))
    return list(models)


@dataclass
class StudyTrainings:
    study: str
    cells: int
    original: int  # trainings of the original code: every model of every cell, trained anew
    models: int  # distinct models the study needs
    new_models: int  # of which no earlier study (config order) needs


def count_trainings(config: dict) -> list[StudyTrainings]:
    seen: set[plan.Model] = set()
    out = []
    for name in config["studies"]:
        cells = {
            cell(ev): len(evaluation_models(config, ev))
            for ev in plan.study_evaluations(config, name)
        }
        models = study_models(config, name)
        new = [m for m in models if m not in seen]
        seen.update(models)
        out.append(StudyTrainings(name, len(cells), sum(cells.values()), len(models), len(new)))
    return out


def trainings_report(config: dict, configfile: str = "") -> str:
    rows = count_trainings(config)
    total_models = sum(r.new_models for r in rows)
    total_original = sum(r.original for r in rows)
    lines = [
        f"segmentation-model trainings{f' for {configfile}' if configfile else ''}",
        "",
        "| study | table cells | original code (models per cell) | this pipeline (distinct models) "
        "| new here |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.study} | {r.cells} | {r.original} | {r.models} | {r.new_models} |")
    factor = total_original / max(total_models, 1)
    lines += [
        f"| **total** | {sum(r.cells for r in rows)} | {total_original} | {total_models} | |",
        "",
        f"{total_models} trainings instead of {total_original} ({factor:.1f}x fewer).",
        "A cell is one (victim variant or release defence, victim architecture, shadow "
        "architecture, training size, attack, seed) of a study; the original code trains its "
        "models for each: a victim (and a distillation teacher) and a shadow, or K reference "
        "models. Here a model is trained once per (dataset, role, architecture, variant, size, "
        "seed) and shared by every attack, table and study (distillation teachers included).",
    ]
    return "\n".join(lines)


# --- device-hours ------------------------------------------------------------------------------


#: the columns of the throughput CSV that ``benchmarks/run.py`` writes and this module reads
FIELDS = (
    "group",
    "arch",
    "arch_key",
    "dataset",
    "in_channels",
    "height",
    "width",
    "out_channels",
    "batch_size",
    "setting",
    "pipeline",
    "images_per_s",
    "images_per_s_min",
    "images_per_s_max",
    "gflops_per_image",
    "repeats",
    "images_per_repeat",
    "peak_rss_mb",
    "peak_gpu_mb",
    "startup_s",
    "note",
    "device",
    "device_name",
    "threads",
    "torch",
    "date",
    "mode",
)


def read_throughput(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise SegmiaError(f"cannot read the benchmark CSV {path}: {err}") from None
    if not rows or "images_per_s" not in rows[0]:
        raise SegmiaError(f"{path}: not a benchmark CSV of benchmarks/run.py")
    # rows without a rate (the demo's wall time) serve no lookup, but a job's start-up does
    rows = [r for r in rows if r["images_per_s"] not in (None, "") or r["group"] == "startup"]
    for row in rows:
        for key in ("in_channels", "height", "width", "out_channels", "batch_size"):
            row[key] = int(row[key]) if row.get(key) not in (None, "") else None
        row["images_per_s"] = float(row["images_per_s"] or "nan")
    return rows


def default_throughput(search: list[Path] | None = None) -> Path:
    """The newest GPU benchmark CSV under ``benchmarks/results/`` (``cuda-<date>.csv``), else
    the newest CPU one (``cpu-<date>.csv``)."""
    roots = search or [Path.cwd(), Path(__file__).resolve().parents[2]]
    for root in roots:
        folder = root / "benchmarks" / "results"
        for kind in ("cuda", "cpu"):
            files = sorted(folder.glob(f"{kind}-*.csv")) if folder.is_dir() else []
            if files:
                return files[-1]
    raise SegmiaError(
        "no benchmark CSV found under benchmarks/results/; run `python benchmarks/run.py` on the "
        "target machine or pass --throughput FILE.csv"
    )


@dataclass
class Lookup:
    rows: list[dict]
    scaled: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)

    def startup(self, rule: str) -> float | None:
        """Seconds of fixed cost per job of ``rule`` (None: the CSV has no startup rows)."""
        setting = STARTUP_RULES[rule]
        for r in self.rows:
            if r["group"] == "startup" and r.get("setting") == setting:
                return float(r["startup_s"])
        return None

    def optional_rate(self, group: str, key: str, shape: tuple, batch_size=None) -> float:
        """:meth:`rate`, or NaN (recorded in ``missing``) when an optional group has no row."""
        try:
            return self.rate(group, key, shape, batch_size)
        except SegmiaError:
            if group not in OPTIONAL_GROUPS:
                raise
            self.missing.add(f"{group} {key}")
            return math.nan

    def rate(
        self, group: str, key: str, shape: tuple, batch_size: int | None = None, **match
    ) -> float:
        """Images per second of ``group`` for ``key`` at ``shape`` (C, H, W, out channels)."""
        cands = [
            r
            for r in self.rows
            if r["group"] == group
            and r["arch_key"] == key
            and r.get("pipeline", "1") in ("1", "True", "true")
            and all(str(r.get(k)) == str(v) for k, v in match.items())
        ]
        if not cands:
            what = f"{group} {key}" + "".join(f" {k}={v}" for k, v in match.items())
            raise SegmiaError(
                f"the benchmark CSV has no row for {what}; run `python benchmarks/run.py` with that "
                "architecture (benchmarks/run.py --help) or pass another --throughput file."
            )
        pixels = shape[1] * shape[2]

        def distance(r):
            same = (r["in_channels"], r["height"], r["width"], r["out_channels"]) == tuple(shape)
            bs = (
                0
                if batch_size is None or r["batch_size"] is None
                else abs(math.log(r["batch_size"] / batch_size))
            )
            return (not same, abs(math.log(r["height"] * r["width"] / pixels)), bs)

        best = min(cands, key=distance)
        rate = best["images_per_s"] * best["height"] * best["width"] / pixels
        if (best["in_channels"], best["height"], best["width"], best["out_channels"]) != tuple(
            shape
        ):
            self.scaled.add(
                f"{group} {key} {'x'.join(map(str, shape[:3]))} from "
                f"{best['in_channels']}x{best['height']}x{best['width']}"
            )
        return rate


STAGES = ("train", "query", "attack_fit", "attack_eval", "startup")


def reference_universe_size(ds: dict, size: int) -> int:
    """Images of a training size's reference universe (what a reference model and its victim
    answer on): 2N + the validation images + the victim's MIA-set non-members."""
    split = ds["split"]
    return 2 * size + int(split["val_size"]) + min(int(split["mia_size"]), size)


def estimate(config: dict, rows: list[dict]) -> tuple[list[dict], Lookup]:
    """Seconds per stage for every study (work charged to the first study that needs it)."""
    from .models.variants import epochs_for

    look = Lookup(rows)
    training = config["training"]
    recipe = config["attack"]
    done_models: set[plan.Model] = set()
    done_attacks: set[str] = set()
    done_reference_queries: set[plan.Model] = set()
    done_groups: set[str] = set()
    out = []
    for name in config["studies"]:
        cost = dict.fromkeys(STAGES, 0.0)
        jobs = dict.fromkeys(STARTUP_RULES, 0)
        jobs["report"] = len(plan.study_tables(config, name)) + len(
            plan.study_figures(config, name)
        )
        models = study_models(config, name)
        for model in models:
            if model in done_models:
                continue
            done_models.add(model)
            jobs["train"] += 1  # its MIA-set query runs in the same job
            ds = config["datasets"][model.dataset]
            shape = dataset_shape(config, model.dataset)
            arch = config["architectures"][model.arch]
            key = arch_key(arch)
            train_cfg = ds.get("training", training)
            batch = int(train_cfg.get("batch_size", training["batch_size"]))
            variant = plan.variant_spec(config, model.variant)
            epochs = epochs_for(variant, int(train_cfg.get("epochs", training["epochs"])))
            images = model.size
            infer = look.rate("extract", key, shape, 64)
            if variant["type"] == "dp":
                rate = look.rate(
                    "dp_train", key, shape, batch, setting=variant.get("grad_sample_mode", "hooks")
                )
            else:
                rate = look.rate("train", key, shape, batch)
            if variant["type"] == "crop":
                rate /= variant.get("fraction", 0.5) ** 2
            if variant["type"] == "distillation":  # at most the reference set (or the pool)
                images = min(int(variant["reference_size"]), int(ds["split"]["victim_pool"]))
                cost["train"] += images / infer
            seconds = epochs * images / rate
            val = int(ds["split"]["val_size"])
            # validation: a forward pass with on-device metrics, about a third of a plain
            # training step (backward ~ 2x forward)
            seconds += epochs * val / (3 * look.rate("train", key, shape, batch))
            if variant["type"] == "minmax":
                seconds += epochs * 2 * model.size / infer
            cost["train"] += seconds
            if model.pool == "reference":
                queried = reference_universe_size(ds, model.size)
            else:
                queried = 2 * min(int(ds["split"]["mia_size"]), model.size)
            cost["query"] += queried / infer
        references = set()
        triggered = set()  # (model, query trigger) of a poisoning study's triggered queries
        groups: dict[str, bool] = {}  # evaluation group -> has a learned attack
        for ev in plan.study_evaluations(config, name):
            ds = config["datasets"][ev.dataset]
            c, h, w, k_out = dataset_shape(config, ev.dataset)
            n = 2 * min(int(ds["split"]["mia_size"]), ev.size)
            for model in (ev.victim, ev.shadow) if ev.query else ():
                if (model, ev.query) not in triggered:
                    triggered.add((model, ev.query))
                    jobs["query"] += 1
                    cost["query"] += n / look.rate(
                        "extract",
                        arch_key(config["architectures"][model.arch]),
                        dataset_shape(config, ev.dataset),
                        64,
                    )
            attack_model = ev.attack_model()
            if ev.shadow.role == "reference":
                references.add((ev.victim, ev.shadow))  # one job runs every reference attack
                continue
            if ev.group() not in done_groups:
                groups[ev.group()] = groups.get(ev.group(), False) or attack_model is not None
            if attack_model is None:
                continue
            channels = 2 * k_out if ev.attack_name == "type2" else k_out
            shape = (channels, h, w, None)
            score = look.optional_rate("attack_score", recipe["classifier"], shape)
            if attack_model not in done_attacks:
                done_attacks.add(attack_model)
                jobs["fit_attack"] += 1
                fit = look.optional_rate(
                    "attack_train", recipe["classifier"], shape, recipe["batch_size"]
                )
                cost["attack_fit"] += recipe["epochs"] * n / fit + n / score
            cost["attack_eval"] += (1 + recipe["last_k"]) * n / score
        jobs["reference_attacks"] = len(references)
        for victim in {victim for victim, _ in references} - done_reference_queries:
            done_reference_queries.add(victim)  # its query of the reference universe
            jobs["query"] += 1
            universe = reference_universe_size(config["datasets"][victim.dataset], victim.size)
            key = arch_key(config["architectures"][victim.arch])
            cost["query"] += universe / look.rate(
                "extract", key, dataset_shape(config, victim.dataset), 64
            )
        done_groups.update(groups)
        jobs["evaluate"] = sum(groups.values())
        jobs["evaluate_threshold"] = len(groups) - jobs["evaluate"]
        for rule, count in jobs.items():
            per_job = look.startup(rule)
            if per_job is None:
                look.missing.add("startup")
                per_job = 0.0
            cost["startup"] += count * per_job
        out.append(
            {
                "study": name,
                "models": len(models),
                **cost,
                "jobs": sum(jobs.values()),
                "total": sum(v for v in cost.values() if not math.isnan(v)),
            }
        )
    return out, look


def cpu_training_gflops(rows: list[dict]) -> float | None:
    """The benchmarked device's effective training rate (GFLOP/s): the median over the plain
    training rows of images/s x 3 x forward GFLOPs per image (backward ~ 2x forward)."""
    rates = [
        r["images_per_s"] * 3 * float(r["gflops_per_image"])
        for r in rows
        if r["group"] == "train" and r.get("gflops_per_image") not in (None, "")
    ]
    return statistics.median(rates) if rates else None


def _meta(rows: list[dict]) -> dict:
    first = rows[0]
    return {k: first.get(k, "") for k in ("device", "device_name", "threads", "date", "torch")}


def estimate_report(
    config: dict,
    throughput: str | Path,
    configfile: str = "",
    speedup: float | None = None,
    gpu_tflops: float | None = None,
) -> str:
    rows = read_throughput(throughput)
    meta = _meta(rows)
    studies, look = estimate(config, rows)
    on_cpu = meta["device"] == "cpu"
    unit = "CPU-h" if on_cpu else "GPU-h"
    lines = [
        f"cost estimate{f' of {configfile}' if configfile else ''} from {throughput}",
        f"throughput measured on {meta['device']} ({meta['device_name']}, {meta['threads']} "
        f"threads, torch {meta['torch']}, {meta['date']})",
    ]
    if on_cpu and gpu_tflops and not speedup:
        cpu = cpu_training_gflops(rows)
        if cpu is None:
            raise SegmiaError(f"{throughput} has no gflops_per_image column to compare FLOP rates")
        speedup = gpu_tflops * 1000 / cpu
        why = (
            f"= an assumed sustained {gpu_tflops:g} TFLOP/s on the GPU / {cpu:.1f} GFLOP/s "
            "measured training on this CPU"
        )
    else:
        why = "assumed"
    if on_cpu:
        lines.append(
            "THESE ARE CPU NUMBERS (hours on the benchmarked CPU"
            + (", per core" if str(meta["threads"]) == "1" else "")
            + "). "
            + (
                f"The GPU column is EXTRAPOLATED, not measured: CPU-hours / {speedup:.0f} ({why})."
                if speedup
                else "For GPU-hours run `python benchmarks/run.py` on the GPU and pass its CSV "
                "with --throughput (or extrapolate with --gpu-tflops or --speedup)."
            )
        )
    head = (
        f"| study | models (new) | jobs | train {unit} | query {unit} | attack fit {unit} | "
        f"attack eval {unit} | start-up {unit} | total {unit} |"
    )
    if on_cpu and speedup:
        head += " GPU-h (extrapolated) |"
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    trainings = {t.study: t for t in count_trainings(config)}
    total = dict.fromkeys((*STAGES, "total"), 0.0)
    for s in studies:
        t = trainings[s["study"]]
        cells = [_hours(s[k]) for k in (*STAGES, "total")]
        line = (
            f"| {s['study']} | {t.models} ({t.new_models}) | {s['jobs']} | "
            + " | ".join(cells)
            + " |"
        )
        if on_cpu and speedup:
            line += f" {s['total'] / 3600 / speedup:.2f} |"
        lines.append(line)
        for k in total:
            total[k] += s[k]
    jobs = sum(s["jobs"] for s in studies)
    line = f"| **total** | | {jobs} | " + " | ".join(_hours(total[k]) for k in total) + " |"
    if on_cpu and speedup:
        line += f" {total['total'] / 3600 / speedup:.2f} |"
    lines.append(line)
    n_models = sum(t.new_models for t in trainings.values())
    n_original = sum(t.original for t in trainings.values())
    lines += [
        "",
        f"segmentation trainings: {n_models} (the original code, which trains every table "
        f"cell's models anew: {n_original})",
        "",
        "how: " + "; ".join(NOTES) + ".",
    ]
    if look.scaled:
        lines.append("scaled by pixel count: " + "; ".join(sorted(look.scaled)) + ".")
    measured = total["total"]
    if total["startup"] and measured:
        lines.append(
            f"start-up: {total['startup'] / 3600:.2f} {unit} of {measured / 3600:.2f} "
            f"({100 * total['startup'] / measured:.0f} % of the total) over {jobs} planned jobs."
        )
    if look.missing:
        lines.append(
            "NOT MEASURED (n/a above, left out of the totals): "
            + "; ".join(sorted(look.missing))
            + ". Run `python benchmarks/run.py --only startup attack` on that device and merge."
        )
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds / 3600:.2f}"
