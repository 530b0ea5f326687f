# segmia: membership inference attacks and defences on semantic segmentation models.
#
#   snakemake --cores all                                  full paper reproduction (config/config.yaml)
#   snakemake --cores all --configfile config/demo.yaml    demo on embedded synthetic data (CPU, minutes)
#   snakemake --cores all results/demo/figures/architectures_ct/roc.png --configfile config/demo.yaml
#                                                          one figure and only what it needs
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

min_version("9.0")


# The paper's config, unless --configfile names another (which then replaces it entirely).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Jobs (and the warm worker) import the segmia package of this checkout, run by the interpreter
# Snakemake runs under (so .venv/bin/snakemake works without activating the venv), or under
# --sdm conda by the env's.
PACKAGE = f"{workflow.basedir}/workflow"
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={PACKAGE}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    + (
        ""
        if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
        else f"export PATH='{Path(sys.executable).parent}':\"$PATH\"; "
    )
    + (f"export {warm.ENV}={WARM_SOCKET}; " if WARM_SOCKET else "")
)


include: "workflow/rules/data.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/attacks.smk"
include: "workflow/rules/report.smk"


# Cheap steps run on the submitting machine (a cluster's login node), not as cluster jobs.
localrules:
    all,
    table,
    figure,
    study_summary,
    summary_attacks,
    summary_models,
    reproduction,


rule all:
    """Every table, figure and summary of the configured studies."""
    default_target: True
    input:
        all_targets(),


onstart:
    warn_cluster_gpu_limit()
    warm.start(WARM_SOCKET, Path(ROOT) / "logs" / "warm_worker.log", PACKAGE)


onsuccess:
    warm.stop()
    print_outputs()


onerror:
    warm.stop()
    print(failure_report(log), file=sys.stderr)
