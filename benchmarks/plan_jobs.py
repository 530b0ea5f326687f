"""Dry-run job counts of a config, per study and in total (Snakemake's own plan).

    python benchmarks/plan_jobs.py [--configfile config/config.yaml]

For every study it asks Snakemake to plan the study's tables and figures in an empty results
directory (a fresh start), parses the "Job stats" table, and prints a Markdown table; jobs shared
between studies (the undefended victim, the shadows, the datasets) count in each study that needs
them, the total at the end counts them once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from segmia.config import load_config_file  # noqa: E402
from segmia.plan import study_figures, study_tables  # noqa: E402

#: the rules that declare ``resources: gpu`` (an evaluation group of threshold attacks alone
#: does not, but Snakemake's job stats do not tell them apart: counted here as GPU jobs)
GPU_RULES = ("train", "query", "query_triggered", "backdoor", "fit_attack", "evaluate")


def planned(targets: list[str], configfile: Path, results: str) -> dict[str, int]:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--cores",
        "1",
        *targets,
        "--configfile",
        str(configfile),
        "--config",
        f"results={results}",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    block = out.split("Job stats:")[1].split("\n\n")[0]
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "config" / "config.yaml")
    args = parser.parse_args()
    config = load_config_file(args.configfile)
    with tempfile.TemporaryDirectory() as tmp:
        results = f"{tmp}/results"
        rows = []
        for name in config["studies"]:
            targets = [f"{results}/{t}.md" for t in study_tables(config, name)]
            targets += [f"{results}/{f}" for f in study_figures(config, name)]
            counts = planned(targets, args.configfile, results)
            rows.append((name, counts))
        total = planned([], args.configfile, results)
    print(
        f"Dry-run job counts of {args.configfile} (fresh start; a study counts every job it needs)\n"
    )
    print(
        "| study | trainings (+ MIA query) | other queries | attack fits | evaluation jobs "
        "| GPU jobs | all jobs |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, c in rows + [("**whole config** (each job once)", total)]:
        evaluations = c.get("evaluate", 0) + c.get("reference_attacks", 0)
        queries = c.get("query", 0) + c.get("query_triggered", 0)
        print(
            f"| {name} | {c.get('train', 0)} | {queries} | {c.get('fit_attack', 0)} "
            f"| {evaluations} | {sum(c.get(r, 0) for r in GPU_RULES)} | {c.get('total', 0)} |"
        )


if __name__ == "__main__":
    main()
