# Config -> targets. All logic lives in the segmia package (segmia.config, segmia.plan).
import json
import os
import re
import secrets
import sys
from pathlib import Path

from segmia import plan, warm
from segmia.attacks import names
from segmia.config import PUBLIC_SOURCES, load_config
from segmia.data.names import OWN_QUERY, QUERY_POOLS
from segmia.models.poisoning import TARGETS, TRIGGERS
from segmia.hardware import gpu_visible
from segmia.models import weights as pretrained
from segmia.protocol import SWITCHES
from segmia.errors import ConfigError
from segmia.logs import failure_report

try:
    CFG = load_config(config)
except ConfigError as err:
    sys.exit(f"segmia: {err}")
# the completed configuration (schema defaults filled in, overlays resolved) is the one the
# report's templates and its configuration page see
config.update(CFG)

ROOT = CFG["results"]
RES = CFG["resources"]
# GPU jobs declare resources: gpu=1 (the profiles cap it) when a GPU is configured or visible.
GPU = int(CFG["device"] == "cuda" or (CFG["device"] == "auto" and gpu_visible()))
# A local run on Linux without a GPU and without --sdm conda/apptainer forks its jobs from one
# warm worker that imported torch & co. once (segmia.warm); elsewhere each job starts afresh.
WARM_SOCKET = (
    warm.socket_path(f"{os.getpid()}-{secrets.token_hex(4)}")
    if CFG["warm_worker"]
    and not GPU
    and sys.platform == "linux"
    and workflow.local_exec
    and not workflow.remote_exec
    and not workflow.deployment_settings.deployment_method
    else None
)
# Every rule runs a step of the segmia package of this checkout ("python -m segmia <step>", the
# same as the console script "segmia <step>"), also inside a --sdm conda environment.
ENV = "../../envs/segmia.yaml"
RUNTIME = "--device {device} {det}".format(
    device=CFG["device"],
    det="--deterministic" if CFG["deterministic"] else "--no-deterministic",
)
EVALUATIONS = plan.all_evaluations(CFG)
# every segmentation model with the studies that use it (summary/models.csv)
MODEL_STUDIES = plan.model_studies(CFG)
# the global-loss evaluation under the original protocol's threshold: global_loss.<token>
THRESHOLD_TOKEN = SWITCHES["threshold"].token


wildcard_constraints:
    dataset=r"[A-Za-z][A-Za-z0-9_.]*",
    arch=r"[A-Za-z][A-Za-z0-9_.]*",
    varch=r"[A-Za-z][A-Za-z0-9_.]*",
    sarch=r"[A-Za-z][A-Za-z0-9_.]*",
    variant=r"[A-Za-z][A-Za-z0-9_.]*",
    vvariant=r"[A-Za-z][A-Za-z0-9_.]*",
    svariant=r"[A-Za-z][A-Za-z0-9_.]*",
    release=r"[A-Za-z][A-Za-z0-9_.]*",
    study=r"[A-Za-z][A-Za-z0-9_.]*",
    role=r"victim|shadow|ref\d+",
    pool="|".join(QUERY_POOLS),
    attack=r"[a-z0-9_]+(\.[a-z]+)?",
    size=r"\d+",
    seed=r"\d+",


def prepared(dataset):
    d = f"{RES}/{plan.PREPARED.format(dataset=dataset)}"
    return {
        "images": f"{d}/images.npy",
        "masks": f"{d}/masks.npy",
        "index": f"{d}/index.csv",
        "meta": f"{d}/meta.json",
    }


def prepared_dir(wildcards):
    return f"{RES}/{plan.PREPARED.format(dataset=wildcards.dataset)}"


# Public datasets (liver, kvasir, cityscapes): downloaded per source into {resources}/raw/<source>/
PUBLIC = {d: ds for d, ds in CFG["datasets"].items() if ds["source"] in PUBLIC_SOURCES}
PUBLIC_USED = sorted({ds["source"] for ds in PUBLIC.values()})


def raw_dir(source):
    return f"{RES}/raw/{source}"


def extracted(source):
    return f"{raw_dir(source)}/extracted"


def download_params(source):
    return next(ds["download"] for ds in PUBLIC.values() if ds["source"] == source)


def alternatives(names):
    """A wildcard constraint matching exactly these names (or nothing)."""
    return "|".join(re.escape(n) for n in names) or "^$"


def split_file(wildcards):
    return f"{ROOT}/{plan.SPLIT.format(dataset=wildcards.dataset, seed=wildcards.seed)}"


def as_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_from(wildcards, role=None, arch=None, variant=None):
    return plan.Model(
        wildcards.dataset,
        role or wildcards.role,
        arch or wildcards.arch,
        variant or wildcards.variant,
        int(wildcards.size),
        int(wildcards.seed),
    )


def teacher_input(wildcards):
    """A distilled victim needs its teacher, the undefended victim (trained once, reused)."""
    if plan.variant_spec(CFG, wildcards.variant)["type"] != "distillation":
        return {}
    return {"teacher": f"{ROOT}/{plan.teacher(model_from(wildcards)).path()}/model.pt"}


def group_dirs(evaluations):
    """The evaluation group directories (one job writes each) of ``evaluations``, once each."""
    return list(dict.fromkeys(f"{ROOT}/{ev.group()}" for ev in evaluations))


def study_evaluations(wildcards):
    """The evaluations a study's table (an architectures study: one table per attack) or figure
    reads."""
    return plan.table_evaluations(CFG, wildcards.study, wildcards.get("table"))


def study_inputs(wildcards):
    """What a study's table or figure reads: its evaluation groups' directories (one job writes
    each), the victims' metrics, backdoor results."""
    evaluations = study_evaluations(wildcards)
    files = {
        "evaluations": group_dirs(evaluations),
        "models": [
            f"{ROOT}/{m.path()}/metrics.json"
            for m in plan.study_victims(CFG, wildcards.study)
        ],
    }
    backdoors = plan.study_backdoors(CFG, wildcards.study)
    if backdoors:
        files["backdoors"] = [f"{ROOT}/{b}" for b in backdoors]
    return files


def study_file_args(wildcards, input):
    """The command-line arguments naming the files of ``study_inputs``: each evaluation's
    metrics.json inside its group's directory."""
    args = [
        "--evaluations "
        + " ".join(
            f"{ROOT}/{ev.path()}/metrics.json" for ev in study_evaluations(wildcards)
        ),
        f"--models {' '.join(input.models)}",
    ]
    if "backdoors" in input.keys():
        args.append(f"--backdoors {' '.join(input.backdoors)}")
    return " ".join(args)


def study_groups(wildcards):
    """The evaluation group directories of a study (its summary's inputs)."""
    return group_dirs(EVALUATIONS[wildcards.study])


def study_evaluation_files(wildcards):
    return [f"{ROOT}/{ev.path()}/metrics.json" for ev in EVALUATIONS[wildcards.study]]


def all_targets():
    targets = [
        f"{ROOT}/summary/models.csv",
        f"{ROOT}/summary/attacks.csv",
        f"{ROOT}/REPRODUCTION.md",
    ]
    for name in CFG["studies"]:
        targets += [
            f"{ROOT}/{stem}.{ext}"
            for stem in plan.study_tables(CFG, name)
            for ext in ("csv", "md", "tex")
        ]
        targets += [f"{ROOT}/{fig}" for fig in plan.study_figures(CFG, name)]
    return targets


def print_outputs():
    print(f"\nsegmia: all outputs are under {ROOT}/")
    print(f"  summaries: {ROOT}/summary/models.csv, {ROOT}/summary/attacks.csv")
    print(f"  all tables with figure links: {ROOT}/REPRODUCTION.md")
    for name in CFG["studies"]:
        print(f"  study {name}:")
        for stem in plan.study_tables(CFG, name):
            print(f"    table  {ROOT}/{stem}.md (also .csv, .tex)")
        for fig in plan.study_figures(CFG, name):
            print(f"    figure {ROOT}/{fig}")


def shadow_of(w):
    return plan.Model(
        w.dataset, "shadow", w.sarch, w.svariant, int(w.size), int(w.seed)
    )


def victim_of(w):
    return plan.Model(
        w.dataset, "victim", w.varch, w.vvariant, int(w.size), int(w.seed)
    )


def victim_query(w):
    """The victim's query an attack reads: clean, or with the trigger its release names."""
    return victim_of(w).query(plan.split_query(w.release)[1])


def shadow_query(w):
    """The shadow's query an attack reads (queried as the victim is), from an evaluation's
    wildcards or a fitted attack's (whose model is the shadow)."""
    shadow = shadow_of(w) if hasattr(w, "sarch") else model_from(w, role="shadow")
    return shadow.query(plan.split_query(w.release)[1])


# the evaluations of a reference attack: the "shadow" is a reference set, K reference models of a
# training variant (plan.reference_set)
REFERENCE_EVALUATIONS = plan.EVALUATIONS.replace("{svariant}", "{refset}")
# the "shadow variant" of a shadow-model evaluation group: anything but a reference set
NOT_REFERENCE_SET = r"(?!refs\d)[A-Za-z][A-Za-z0-9_.]*"


def reference_models(w):
    return plan.references(reference_set_of(w))


def reference_inputs(w):
    models = [victim_of(w), *reference_models(w)]
    files = {}
    for i, m in enumerate(models):
        files[f"logits{i}"] = f"{ROOT}/{m.reference_query()}/logits.npy"
        files[f"samples{i}"] = f"{ROOT}/{m.reference_query()}/samples.csv"
        files[f"members{i}"] = f"{ROOT}/{m.path()}/members.csv"
    return files


def reference_set_of(w):
    """The reference-set identity of a reference attack's wildcards (plan.references)."""
    return plan.Model(
        w.dataset, "reference", w.sarch, w.refset, int(w.size), int(w.seed)
    )


def reference_spec(w):
    return as_json(
        plan.reference_spec(CFG, victim_of(w), reference_set_of(w), w.release)
    )


# every evaluation the config needs, by the group directory one evaluate job writes
EVALUATION_GROUPS = plan.evaluation_groups(CFG)


def evaluation_group(w):
    """The evaluations of an evaluate job's wildcards: every study's attacks on that victim by
    that shadow under that release."""
    group = plan.EVALUATIONS.format(**{k: w[k] for k in w.keys()})
    if group not in EVALUATION_GROUPS:
        raise ValueError(
            f"no configured study evaluates {group}: request the tables and figures of a study "
            "(see 'snakemake --list-target-rules' or the README) rather than an attack directory."
        )
    return EVALUATION_GROUPS[group]


def group_attack_models(w):
    """{attack: fitted attack model directory} of the group's learned attacks."""
    models = {ev.attack: ev.attack_model() for ev in evaluation_group(w)}
    return {attack: path for attack, path in models.items() if path is not None}


def group_specs(w):
    return as_json(
        {ev.attack: plan.evaluation_spec(CFG, ev) for ev in evaluation_group(w)}
    )


def warn_cluster_gpu_limit():
    """`--profile profiles/slurm` also loads the workflow profile profiles/default, whose gpu=1
    would run one GPU job at a time on the whole cluster (profiles/slurm is for --workflow-profile).
    """
    limit = workflow.global_resources.get("gpu")
    if workflow.non_local_exec and getattr(limit, "value", limit) == 1:
        print(
            "segmia: warning: a cluster run limited to one GPU job at a time (resources gpu=1, "
            "probably from profiles/default). Use --workflow-profile profiles/slurm instead of "
            "--profile profiles/slurm, or raise the limit with --resources gpu=<N>.",
            file=sys.stderr,
        )


# --- pretrained weights (rules/weights.smk; inputs of train and fit_attack) ---
WEIGHTS = plan.weight_files(CFG)


def weights_file(name):
    return f"{RES}/weights/{name}"


def arch_weights(wildcards):
    """{"weights": file} when the model's encoder starts from pretrained weights."""
    name = pretrained.arch_file(CFG["architectures"][wildcards.arch])
    return {"weights": weights_file(name)} if name else {}


def inner_weights(wildcards):
    """{"inner_weights": file} when a min-max variant's inner ResNet starts from ImageNet."""
    variant = plan.variant_spec(CFG, wildcards.variant)
    name = pretrained.inner_file(CFG, variant)
    return {"inner_weights": weights_file(name)} if name else {}


def attack_weights(wildcards):
    """{"weights": file} when the attack classifier starts from pretrained weights."""
    name = pretrained.attack_file(CFG["attack"])
    return {"weights": weights_file(name)} if name else {}


def weights_args(wildcards, input):
    """--weights FILE --weights-digest DIGEST of a job with a weights input (derived from the
    input, so no tracked parameter: the file's modification time is what reruns the job).
    """
    args = []
    for key, option in (("weights", "--weights"), ("inner_weights", "--inner-weights")):
        if key in input.keys():
            digest = pretrained.digest_text(
                Path(input[key]).name, CFG["weights"]["checksums"]
            )
            args.append(f"{option} {input[key]} {option}-digest {digest}")
    return " ".join(args)
