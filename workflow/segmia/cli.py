"""``segmia``: one subcommand per pipeline step (each Snakemake rule calls one of them).

Every step can be run by hand with the command its rule prints. Errors the user can fix are
printed as one paragraph (no traceback) and exit with status 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from .config import DEVICES, PUBLIC_SOURCES, SYNTHETIC_SOURCES
from .data.names import QUERY_POOLS
from .errors import SegmiaError
from .models.poisoning import TARGETS, TRIGGERS
from .plan import FIGURES

log = logging.getLogger("segmia")


def _json(text: str) -> dict:
    """A JSON object given inline or as @path."""
    try:
        if text.startswith("@"):
            return json.loads(Path(text[1:]).read_text())
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise argparse.ArgumentTypeError(f"not a JSON object or @file: {err}") from None


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)


def _study_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study-json", type=_json, required=True, help="the study's config (JSON)")
    p.add_argument(
        "--evaluations", nargs="+", required=True, help="metrics.json of the evaluations"
    )
    p.add_argument("--models", nargs="+", required=True, help="metrics.json of the victims")
    p.add_argument("--backdoors", nargs="*", default=[], help="backdoor results (poisoning)")


def _weights(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        type=Path,
        help="the local pretrained weight file the model starts from, e.g. "
        "resources/weights/resnet34-333f7ec4.pth (see the fetch-weights step)",
    )
    p.add_argument(
        "--weights-digest",
        help="sha256:<hex> the file must have (a full digest or a prefix; default: the "
        "published prefix in its file name)",
    )


def _local_weights(args):
    from .models.weights import LocalWeights

    return LocalWeights(args.weights, args.weights_digest) if args.weights else None


def _inner_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inner-weights",
        type=Path,
        help="min-max with inner_classifier: resnet34: the local ImageNet weight file its inner "
        "attack starts from, e.g. resources/weights/resnet34-b627a593.pth (without it: random "
        "initialisation)",
    )
    p.add_argument(
        "--inner-weights-digest",
        help="sha256:<hex> the --inner-weights file must have (a full digest or a prefix; "
        "default: the published prefix in its file name)",
    )


def _local_inner_weights(args):
    from .models.weights import LocalWeights

    if not args.inner_weights:
        return None
    return LocalWeights(args.inner_weights, args.inner_weights_digest)


def _device(args):
    from .runtime import setup

    return setup(args.device, args.threads, args.deterministic)


# --- steps --------------------------------------------------------------------------------------


def cmd_synthesize(args) -> None:
    from .data.prepared import write_prepared
    from .data.synthetic import generate

    images, masks, index, meta = generate(args.source, args.params)
    write_prepared(args.out, images, masks, index, {**meta, "name": args.name or meta["name"]})
    log.info(
        "wrote %d %s samples (%s) to %s",
        len(index),
        args.source,
        "x".join(map(str, images.shape[1:])),
        args.out,
    )


def cmd_download(args) -> None:
    from .data.download import download_source
    from .data.sources import get_source

    target = download_source(get_source(args.source), args.raw, args.params, args.lock)
    log.info("%s: unpacked into %s", args.source, target)


def cmd_fetch_weights(args) -> None:
    from .models.weights import fetch_file

    digest = fetch_file(args.out, args.params)
    log.info("%s: ready (sha256 %s)", args.out, digest)


def cmd_prepare(args) -> None:
    from .data.sources import get_source

    count = get_source(args.source).prepare(
        args.raw, args.params, args.out, args.name or args.source
    )
    log.info("wrote %d %s samples to %s", count, args.source, args.out)


def cmd_replica(args) -> None:
    from .data.replica import write_replica

    for name, digest in write_replica(args.source, args.out, args.seed, **args.params).items():
        print(f"{args.out / name}  {digest}")


def cmd_warm_worker(args) -> None:
    from .warm import serve

    serve(args.socket, main, args.parent)


def cmd_rehearsal(args) -> None:
    from .rehearsal import run

    extra = args.snakemake[1:] if args.snakemake[:1] == ["--"] else args.snakemake
    status = run(Path.cwd(), args.seeds, args.cores, args.port, extra)
    if status:
        raise SegmiaError(
            f"Snakemake stopped with status {status}; its output above names the failed job and "
            "its log. Fix it and rerun the same command: finished jobs are kept."
        )


def cmd_split(args) -> None:
    from .data.prepared import load_prepared
    from .data.split import make_split
    from .io import write_csv

    data = load_prepared(args.data)
    split = make_split(data.index, args.params, args.seed, where=str(args.data))
    write_csv(args.out, split)
    counts = split.groupby(["pool", "role"]).size()
    log.info(
        "split (seed %d): %s", args.seed, ", ".join(f"{p}/{r}={n}" for (p, r), n in counts.items())
    )


def cmd_train(args) -> None:
    from .models.job import train_job

    train_job(
        data_dir=args.data,
        split_path=args.split,
        spec=args.spec,
        out_dir=args.out,
        device=_device(args),
        teacher_dir=args.teacher,
        weights=_local_weights(args),
        inner_weights=_local_inner_weights(args),
    )


def cmd_backdoor(args) -> None:
    from .models.backdoor import backdoor_job

    backdoor_job(
        model_dir=args.model,
        data_dir=args.data,
        split_path=args.split,
        trigger=args.trigger,
        size=args.size,
        value=args.value,
        target=args.target,
        out=args.out,
        device=_device(args),
    )


def cmd_query(args) -> None:
    from .attacks.outputs import query_job

    query_job(
        model_dir=args.model,
        data_dir=args.data,
        split_path=args.split,
        pool=args.pool,
        train_size=args.train_size,
        sizes=args.sizes,
        out_dir=args.out,
        device=_device(args),
        batch_size=args.batch_size,
        trigger=None
        if args.trigger is None
        else {"trigger": args.trigger, "size": args.trigger_size, "value": args.trigger_value},
    )


def cmd_fit_attack(args) -> None:
    from .attacks.job import fit_attack_job

    fit_attack_job(
        shadow_query=args.shadow_query,
        data_dir=args.data,
        spec=args.spec,
        out_dir=args.out,
        device=_device(args),
        weights=_local_weights(args),
    )


def cmd_evaluate(args) -> None:
    from .attacks.job import evaluate_job
    from .attacks.names import LEARNED

    # a group of threshold attacks alone reads stored answers: no device to set up
    learned = any(spec.get("attack") in LEARNED for spec in args.specs.values())
    evaluate_job(
        specs=args.specs,
        victim_query=args.victim_query,
        shadow_model=args.shadow_model,
        shadow_query=args.shadow_query,
        data_dir=args.data,
        out_dir=args.out,
        device=_device(args) if learned else None,
        attack_models=dict(_pair(item) for item in args.attack_models),
    )


def _pair(text: str) -> tuple[str, str]:
    """NAME=VALUE."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise SegmiaError(f"{text!r} is not NAME=DIR (e.g. type2=results/.../attack_models/...)")
    return name, value


def cmd_reference_attacks(args) -> None:
    from .attacks.job import reference_attacks_job

    outs = dict(_pair(item) for item in args.out)
    reference_attacks_job(
        victim=args.victim_model,
        references=args.references,
        data_dir=args.data,
        spec=args.spec,
        out_dirs=outs,
    )


def cmd_summary_models(args) -> None:
    from .io import write_csv
    from .report.summary import collect_models

    write_csv(args.out, collect_models(args.inputs, args.studies))


def cmd_study_summary(args) -> None:
    from .io import write_csv
    from .report.summary import collect_evaluations

    write_csv(args.out, collect_evaluations(args.study, args.inputs))


def cmd_summary_attacks(args) -> None:
    from .io import write_csv
    from .report.summary import concat

    write_csv(args.out, concat(args.inputs))


def cmd_table(args) -> None:
    from .report.studies import write_table

    write_table(
        args.study,
        args.study_json,
        args.table,
        args.evaluations,
        args.models,
        args.backdoors,
        args.out,
    )


def cmd_figure(args) -> None:
    from .report.studies import draw_figure

    draw_figure(
        args.study,
        args.study_json,
        args.kind,
        args.evaluations,
        args.models,
        args.backdoors,
        args.out,
        args.dpi,
        args.min_fpr,
    )


def cmd_reproduction(args) -> None:
    from .report.reproduction import write_reproduction

    write_reproduction(args.out, args.studies, args.tables, args.figures)


def cmd_check_config(args) -> None:
    from .config import load_config_file
    from .plan import all_evaluations, all_models, study_figures, study_tables

    config = load_config_file(args.configfile)
    evaluations = all_evaluations(config)
    print(f"{args.configfile}: valid. Results under {config['results']}/")
    print(
        f"{len(all_models(config))} segmentation models, {sum(map(len, evaluations.values()))} attack evaluations"
    )
    for name, study in config["studies"].items():
        print(
            f"\nstudy {name} ({study['type']}, dataset {study['dataset']}): {len(evaluations[name])} evaluations"
        )
        for stem in study_tables(config, name):
            print(f"  {config['results']}/{stem}.{{csv,md,tex}}")
        for fig in study_figures(config, name):
            print(f"  {config['results']}/{fig}")


def cmd_trainings(args) -> None:
    from .config import load_config_file
    from .cost import trainings_report

    print(trainings_report(load_config_file(args.configfile), str(args.configfile)))


def cmd_estimate(args) -> None:
    from .config import load_config_file
    from .cost import default_throughput, estimate_report

    config = load_config_file(args.configfile)
    throughput = args.throughput or default_throughput()
    print(estimate_report(config, throughput, str(args.configfile), args.speedup, args.gpu_tflops))


# --- parser -------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segmia", description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")

    s = sub.add_parser("synthesize", help="generate an embedded synthetic dataset")
    s.add_argument("--source", required=True, choices=SYNTHETIC_SOURCES)
    s.add_argument(
        "--params", type=_json, required=True, help="the config's synthetic parameters (JSON)"
    )
    s.add_argument("--name", help="dataset name recorded in meta.json")
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=cmd_synthesize)

    s = sub.add_parser(
        "download",
        help="download (or take the hand-placed archives), verify and unpack a public dataset",
        description="Archives go to RAW/, the unpacked tree to RAW/extracted/. Cityscapes "
        "reads its account from CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD.",
    )
    s.add_argument("--source", required=True, choices=PUBLIC_SOURCES)
    s.add_argument("--raw", required=True, type=Path, help="e.g. resources/raw/liver")
    s.add_argument(
        "--params",
        type=_json,
        default={},
        help="the config's download section (JSON): base_url, checksums, retries, ...",
    )
    s.add_argument(
        "--lock",
        required=True,
        type=Path,
        help="checksum lock file (digests of first downloads), e.g. resources/checksums.lock.json",
    )
    s.set_defaults(func=cmd_download)

    s = sub.add_parser(
        "fetch-weights",
        help="download (or take the hand-placed copy of) a pretrained weight file and verify it",
        description="OUT's file name selects the registered weight file (segmia.models.weights): "
        "its URL under base_url and its pinned digest.",
    )
    s.add_argument(
        "--out", required=True, type=Path, help="e.g. resources/weights/resnet34-333f7ec4.pth"
    )
    s.add_argument(
        "--params",
        type=_json,
        default={},
        help="the config's weights section (JSON): base_url, checksums, retries, ...",
    )
    s.set_defaults(func=cmd_fetch_weights)

    s = sub.add_parser("prepare", help="convert an unpacked public dataset to the prepared format")
    s.add_argument("--source", required=True, choices=PUBLIC_SOURCES)
    s.add_argument("--raw", required=True, type=Path, help="e.g. resources/raw/liver/extracted")
    s.add_argument("--params", type=_json, default={}, help="the config's prepare section (JSON)")
    s.add_argument("--name", help="dataset name recorded in meta.json")
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser(
        "replica",
        help="write miniature archives in a public dataset's official format (synthetic "
        "contents) and print their MD5s, for download.checksums",
    )
    s.add_argument("--source", required=True, choices=PUBLIC_SOURCES)
    s.add_argument("--out", required=True, type=Path, help="e.g. resources/raw/liver")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--params",
        type=_json,
        default={},
        help='size options (JSON): liver {"size": 32}, kvasir {"min_side": 40, "max_side": '
        '96}, cityscapes {"width": 64, "height": 32, "test_per_city": 2, "extras": true}',
    )
    s.set_defaults(func=cmd_replica)

    s = sub.add_parser(
        "rehearsal",
        help="the paper config's studies on replica datasets, affordable on a CPU "
        "(config/config.yaml + config/rehearsal.yaml; run from the repository root)",
    )
    s.add_argument("--seeds", type=int, nargs="+", help="default: the paper config's seeds")
    s.add_argument("--cores", default="all")
    s.add_argument("--port", type=int, default=0, help="serve fixture weights here (0: any)")
    s.add_argument(
        "snakemake", nargs=argparse.REMAINDER, help="after --: more Snakemake arguments, e.g. -n"
    )
    s.set_defaults(func=cmd_rehearsal)

    s = sub.add_parser("split", help="seeded pools and roles (split.groups: the membership unit)")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--params", type=_json, required=True, help="the dataset's split sizes (JSON)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=cmd_split)

    s = sub.add_parser("train", help="train one segmentation model")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--spec", type=_json, required=True, help="model spec (JSON or @file)")
    s.add_argument("--teacher", type=Path, help="distillation: the teacher's model directory")
    s.add_argument("--out", required=True, type=Path)
    _weights(s)
    _inner_weights(s)
    _runtime(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "query", help="run a model over an MIA set (batched), store logits and per-image losses"
    )
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument(
        "--pool",
        required=True,
        choices=QUERY_POOLS,
        help="query set: a pool's MIA set, or the reference universe",
    )
    s.add_argument("--train-size", type=int, required=True)
    s.add_argument("--sizes", type=_json, required=True, help="the dataset's split sizes (JSON)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument(
        "--trigger",
        choices=TRIGGERS,
        help="write this poisoning trigger into every query image (the masks stay clean)",
    )
    s.add_argument("--trigger-size", type=int, default=16, help="with --trigger: k in pixels")
    s.add_argument("--trigger-value", type=int, default=255, help="with --trigger: its intensity")
    s.add_argument("--out", required=True, type=Path)
    _runtime(s)
    s.set_defaults(func=cmd_query)

    s = sub.add_parser(
        "backdoor", help="backdoor success of a model on triggered validation images"
    )
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--split", required=True, type=Path)
    s.add_argument("--trigger", required=True, choices=TRIGGERS)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--value", type=int, required=True)
    s.add_argument("--target", required=True, choices=TARGETS)
    s.add_argument("--out", required=True, type=Path)
    _runtime(s)
    s.set_defaults(func=cmd_backdoor)

    s = sub.add_parser("fit-attack", help="train a learned attack on a shadow model's outputs")
    s.add_argument("--shadow-query", required=True, type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--spec", type=_json, required=True)
    s.add_argument("--out", required=True, type=Path)
    _weights(s)
    _runtime(s)
    s.set_defaults(func=cmd_fit_attack)

    s = sub.add_parser(
        "evaluate",
        help="every attack on one victim by one shadow under one release (learned and threshold)",
    )
    s.add_argument("--victim-query", required=True, type=Path)
    s.add_argument("--shadow-model", required=True, type=Path)
    s.add_argument(
        "--shadow-query",
        required=True,
        type=Path,
        help="the shadow's query (queried as the victim is): the aggregates calibrate on it",
    )
    s.add_argument("--data", required=True, type=Path)
    s.add_argument(
        "--specs",
        type=_json,
        required=True,
        help='evaluation specs by attack directory name, e.g. {"type2": {...}} (JSON or @file)',
    )
    s.add_argument(
        "--attack-models",
        nargs="*",
        default=[],
        help="ATTACK=DIR: the fitted model of every learned attack among --specs",
    )
    s.add_argument("--out", required=True, type=Path, help="the group directory (one per attack)")
    _runtime(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("reference-attacks", help="LiRA and RMIA on K reference models")
    s.add_argument("--victim-model", required=True, type=Path)
    s.add_argument(
        "--references", required=True, nargs="+", type=Path, help="reference model directories"
    )
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--spec", type=_json, required=True)
    s.add_argument("--out", required=True, nargs="+", help="ATTACK=DIR for every attack to write")
    s.set_defaults(func=cmd_reference_attacks)

    s = sub.add_parser(
        "summary-models",
        help="models' metrics.json files -> summary/models.csv (rule summary_models)",
    )
    s.add_argument("--out", required=True, type=Path)
    s.add_argument(
        "--studies",
        nargs="+",
        help="per input, in order: the studies that use the model (comma-separated)",
    )
    s.add_argument("inputs", nargs="+")
    s.set_defaults(func=cmd_summary_models)

    s = sub.add_parser(
        "study-summary",
        help="a study's evaluation metrics.json files -> one CSV (rule study_summary)",
    )
    s.add_argument("--study", required=True)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("inputs", nargs="+")
    s.set_defaults(func=cmd_study_summary)

    s = sub.add_parser(
        "summary-attacks",
        help="the studies' summaries -> summary/attacks.csv (rule summary_attacks)",
    )
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("inputs", nargs="+")
    s.set_defaults(func=cmd_summary_attacks)

    s = sub.add_parser("table", help="a study's table (CSV, Markdown, LaTeX)")
    s.add_argument("--study", required=True)
    s.add_argument(
        "--table", required=True, help="architectures: the attack; else the study type's table"
    )
    s.add_argument("--out", required=True, type=Path, help="path without extension")
    _study_inputs(s)
    s.set_defaults(func=cmd_table)

    s = sub.add_parser("figure", help="a study's figure (PNG)")
    s.add_argument("kind", choices=FIGURES)
    s.add_argument("--study", required=True)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--dpi", type=int, default=150)
    s.add_argument("--min-fpr", type=float, default=1e-5)
    _study_inputs(s)
    s.set_defaults(func=cmd_figure)

    s = sub.add_parser("reproduction", help="REPRODUCTION.md: all study tables with figure links")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--studies", type=_json, required=True, help="the studies of the config (JSON)")
    s.add_argument("--tables", type=_json, required=True, help="study -> table .md files (JSON)")
    s.add_argument("--figures", type=_json, required=True, help="study -> figure files (JSON)")
    s.set_defaults(func=cmd_reproduction)

    s = sub.add_parser(
        "warm-worker",
        help="serve local jobs from one process that has imported torch & co. once (the "
        "Snakefile starts it; see segmia.warm)",
    )
    s.add_argument("--socket", required=True, help="the Unix socket to listen on")
    s.add_argument(
        "--parent", type=int, help="exit when this process exits (default: the parent process)"
    )
    s.set_defaults(func=cmd_warm_worker)

    s = sub.add_parser("check-config", help="validate a config file and list each study's outputs")
    s.add_argument("configfile", type=Path)
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser(
        "trainings",
        help="segmentation trainings the config needs vs the original code (a victim and a "
        "shadow per table cell)",
    )
    s.add_argument("--configfile", type=Path, default=Path("config/config.yaml"))
    s.set_defaults(func=cmd_trainings)

    s = sub.add_parser(
        "estimate", help="device-hours per study from measured throughput (benchmarks/run.py)"
    )
    s.add_argument("--configfile", type=Path, default=Path("config/config.yaml"))
    s.add_argument(
        "--throughput",
        type=Path,
        help="a benchmarks/run.py CSV (default: the newest GPU CSV in benchmarks/results/, "
        "else the newest CPU one)",
    )
    s.add_argument(
        "--speedup",
        type=float,
        help="with a CPU CSV: an assumed CPU->GPU factor for an extrapolated GPU-hours column",
    )
    s.add_argument(
        "--gpu-tflops",
        type=float,
        help="with a CPU CSV: extrapolate GPU-hours assuming this sustained GPU training rate "
        "(TFLOP/s) against the CPU's measured rate",
    )
    s.set_defaults(func=cmd_estimate)
    return p


OOM_HINT = "Run fewer GPU jobs at once (snakemake --resources gpu=1) or use a GPU with more memory;"
#: the config key whose batch size a step's GPU memory grows with
OOM_HINTS = {
    "train": "Lower training.batch_size (or datasets.<name>.training.batch_size) in the config, "
    "or run fewer GPU jobs at once (snakemake --resources gpu=1);",
    "fit-attack": "Lower attack.batch_size in the config, or run fewer GPU jobs at once "
    "(snakemake --resources gpu=1);",
}


def _out_of_memory(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or a RuntimeError that says so (cuDNN, cuBLAS, MPS)."""
    return type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def main(argv: list[str] | None = None) -> int:
    from .logs import configure_logging

    args = parser().parse_args(argv)
    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        args.func(args)
    except SegmiaError as err:
        print(f"segmia {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            print(
                f"segmia {args.command}: error: no space left on the device while writing "
                f"{err.filename or 'an output'}. Free disk space (or point 'results'/'resources' "
                "in the config to a larger disk) and rerun; finished outputs are intact and "
                "no file was left half-written.",
                file=sys.stderr,
            )
            return 1
        raise
    except Exception as err:
        if _out_of_memory(err):
            first = (str(err).splitlines() or [""])[0][:160]
            print(
                f"segmia {args.command}: error: the GPU ran out of memory ({first}). "
                f"{OOM_HINTS.get(args.command, OOM_HINT)} finished outputs are intact.",
                file=sys.stderr,
            )
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
