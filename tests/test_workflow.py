"""The pipeline through Snakemake on the tiny config: contents, not just files."""

import pandas as pd
import pytest
from conftest import planned_jobs as _planned
from conftest import run_snakemake, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import CONFIGS, load_yaml

    tmp = tmp_path_factory.mktemp("tiny")
    config = load_yaml(CONFIGS / "tiny.yaml")
    config["results"] = str(tmp / "results")
    config["resources"] = str(tmp / "resources")
    configfile = write_config(tmp, config)
    proc = run_snakemake("--cores", "2", workdir=tmp, configfile=configfile)
    return tmp, config, configfile, proc


def test_summaries_have_one_row_per_model_and_evaluation(tiny_run):
    tmp, config, _, proc = tiny_run
    root = tmp / "results"
    models = pd.read_csv(root / "summary" / "models.csv")
    assert len(models) == 4  # 2 architectures x (victim, shadow), each trained once
    assert set(models["role"]) == {"victim", "shadow"}
    assert (
        models[["dataset", "role", "arch", "variant", "train_size", "seed"]].duplicated().sum() == 0
    )
    assert (models["val_dice"] > 0.5).all(), models
    assert (models["train_loss"] < models["val_loss"]).all(), "the victims should overfit"
    attacks = pd.read_csv(root / "summary" / "attacks.csv")
    assert len(attacks) == 2 * 2 * 3
    assert set(attacks["attack"]) == {"type1", "type2", "global_loss"}
    assert (
        attacks[["auc", "accuracy", "f1", "balanced_accuracy", "tpr_at_1pct_fpr"]]
        .notna()
        .all()
        .all()
    )
    assert "segmia: all outputs are under" in proc.stdout


def test_overfitted_victims_are_attackable(tiny_run):
    tmp, *_ = tiny_run
    attacks = pd.read_csv(tmp / "results" / "summary" / "attacks.csv")
    matched = attacks[
        (attacks["victim"] == attacks["shadow"]) & attacks["attack"].isin(["type2", "global_loss"])
    ]
    assert matched["auc"].max() > 0.6, matched[["victim", "attack", "auc"]]


def test_tables_match_the_summary(tiny_run):
    tmp, *_ = tiny_run
    root = tmp / "results"
    attacks = pd.read_csv(root / "summary" / "attacks.csv")
    for attack in ("type1", "type2", "global_loss"):
        table = pd.read_csv(root / "tables" / "grid" / f"{attack}.csv")
        auc = table[(table["metric"] == "auc") & (table["statistic"] == "mean")].set_index("victim")
        for row in attacks[attacks["attack"] == attack].itertuples():
            assert auc.loc[row.victim, row.shadow] == pytest.approx(row.auc)
        md = (root / "tables" / "grid" / f"{attack}.md").read_text()
        assert "ROC-AUC" in md and "tiny_res" in md
        assert "\\begin{tabular}" in (root / "tables" / "grid" / f"{attack}.tex").read_text()
    for fig in ("heatmap", "roc"):
        assert (root / "figures" / "grid" / f"{fig}.png").stat().st_size > 5000


def test_rerun_has_nothing_to_do_and_one_figure_needs_only_its_study(tiny_run):
    tmp, _, configfile, _ = tiny_run
    proc = run_snakemake("-n", "--cores", "1", workdir=tmp, configfile=configfile)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_a_plot_setting_reruns_only_the_plots(tiny_run):
    tmp, config, _, _ = tiny_run
    config = {**config, "plots": {**config.get("plots", {}), "dpi": 61}}
    configfile = write_config(tmp, config, "dpi.yaml")
    planned = _planned(run_snakemake("-n", "--cores", "1", workdir=tmp, configfile=configfile))
    assert set(planned) - {"all"} == {"figure"}, planned


def test_report_has_every_table_figure_and_caption(tiny_run):
    import re

    tmp, config, configfile, _ = tiny_run
    report = tmp / "report.html"
    run_snakemake("--report", str(report), workdir=tmp, configfile=configfile)
    html = report.read_text()
    root = tmp / "results"
    expected = [root / "tables" / "grid" / f"{a}.csv" for a in ("type1", "type2", "global_loss")]
    expected += [root / "figures" / "grid" / f"{f}.png" for f in ("heatmap", "roc")]
    expected += [
        root / "summary" / "models.csv",
        root / "summary" / "attacks.csv",
        root / "REPRODUCTION.md",
    ]
    for path in expected:
        entry = re.search(
            rf'"{re.escape(str(path))}": {{"name": "{path.name}".*?"caption": "(.*?)", "mime_type"',
            html,
        )
        assert entry, f"{path} missing from the report"
        caption = " ".join(entry.group(1).split())
        assert len(caption) > 80 and "System Message" not in caption, (path, caption)
        if "grid" in path.parts:
            assert "Study <strong>grid</strong>" in caption, caption
    text = " ".join(html.split())
    assert "Victim architecture (rows) against shadow architecture (columns)" in text
    assert "Membership Inference Attacks Against Semantic Segmentation Models" in text
    reproduction = (root / "REPRODUCTION.md").read_text()
    assert (
        "## grid" in reproduction
        and "ROC-AUC" in reproduction
        and "figures/grid/roc.png" in reproduction
    )


def test_local_jobs_start_in_the_warm_worker(tiny_run):
    """A local run forks its jobs from one warm worker (segmia.warm), which logs each job."""
    tmp, *_ = tiny_run
    log = (tmp / "results" / "logs" / "warm_worker.log").read_text()
    served = [line for line in log.splitlines() if " exited " in line]
    steps = {line.split("worker: ")[1].split(" (process")[0] for line in served}
    assert {"train", "fit-attack", "evaluate", "table", "figure"} <= steps, log
    assert all(line.split(" exited ")[1].startswith("0 ") for line in served), log


def test_jobs_run_the_interpreter_snakemake_runs_under_whatever_path_says(tmp_path, tiny_config):
    """.venv/bin/snakemake without an activated venv: the jobs' "python -m segmia" must still be
    this interpreter, not the system's (which lacks the packages). With warm_worker: false no
    worker starts: every job runs in its own process."""
    tiny_config["warm_worker"] = False
    configfile = write_config(tmp_path, tiny_config)
    split = f"{tiny_config['results']}/ct/splits/s0.csv"
    proc = run_snakemake(
        "--cores",
        "1",
        split,
        workdir=tmp_path,
        configfile=configfile,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0
    assert pd.read_csv(split)["pool"].isin(["victim", "shadow", "unused"]).all()
    assert not (tmp_path / "results" / "logs" / "warm_worker.log").exists()
