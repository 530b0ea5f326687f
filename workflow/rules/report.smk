rule table:
    """Render one study table (CSV, Markdown, LaTeX) from its evaluations' metrics."""
    input:
        unpack(study_inputs),
    output:
        csv=report(
            f"{ROOT}/{plan.TABLE}.csv",
            caption="../report/table.rst",
            category="{study}",
            labels={"type": "table", "table": "{table}"},
        ),
        md=f"{ROOT}/{plan.TABLE}.md",
        tex=f"{ROOT}/{plan.TABLE}.tex",
    log:
        f"{ROOT}/logs/table/{{study}}/{{table}}.log",
    benchmark:
        f"{ROOT}/benchmarks/table/{{study}}/{{table}}.tsv"
    conda:
        ENV
    params:
        stem=lambda w, output: output.csv[: -len(".csv")],
        study=lambda w: as_json(plan.study_spec(CFG, w.study)),
        files=study_file_args,
    shell:
        "python -m segmia table --study {wildcards.study} --table {wildcards.table}"
        " --study-json {params.study:q} --out {params.stem} {params.files} 2> {log}"


rule figure:
    """Draw one study figure (PNG) from its evaluations' scores and metrics."""
    input:
        unpack(study_inputs),
    output:
        report(
            f"{ROOT}/{plan.FIGURE}.png",
            caption="../report/figure.rst",
            category="{study}",
            labels={"type": "figure", "figure": "{figure}"},
        ),
    log:
        f"{ROOT}/logs/figure/{{study}}/{{figure}}.log",
    benchmark:
        f"{ROOT}/benchmarks/figure/{{study}}/{{figure}}.tsv"
    wildcard_constraints:
        figure=alternatives(plan.FIGURES),
    conda:
        ENV
    params:
        study=lambda w: as_json(plan.study_spec(CFG, w.study)),
        files=study_file_args,
        dpi=CFG["plots"]["dpi"],
        min_fpr=CFG["plots"]["roc_min_fpr"],
    shell:
        "python -m segmia figure {wildcards.figure} --study {wildcards.study}"
        " --study-json {params.study:q} --out {output} --dpi {params.dpi}"
        " --min-fpr {params.min_fpr} {params.files} 2> {log}"


rule study_summary:
    """Collect one study's evaluations into its summary CSV."""
    input:
        study_groups,
    output:
        f"{ROOT}/summary/studies/{{study}}.csv",
    log:
        f"{ROOT}/logs/summary/{{study}}.log",
    benchmark:
        f"{ROOT}/benchmarks/summary/{{study}}.tsv"
    conda:
        ENV
    params:
        files=study_evaluation_files,
    shell:
        "python -m segmia study-summary --study {wildcards.study} --out {output} {params.files} 2> {log}"


rule summary_attacks:
    """Concatenate the studies' summaries into summary/attacks.csv."""
    input:
        expand(f"{ROOT}/summary/studies/{{study}}.csv", study=list(CFG["studies"])),
    output:
        report(
            f"{ROOT}/summary/attacks.csv",
            caption="../report/attacks_summary.rst",
            category="Summary",
        ),
    log:
        f"{ROOT}/logs/summary/attacks.log",
    benchmark:
        f"{ROOT}/benchmarks/summary/attacks.tsv"
    conda:
        ENV
    shell:
        "python -m segmia summary-attacks --out {output} {input} 2> {log}"


rule summary_models:
    """Collect every trained model's metrics into summary/models.csv."""
    input:
        [f"{ROOT}/{m.path()}/metrics.json" for m in MODEL_STUDIES],
    output:
        report(
            f"{ROOT}/summary/models.csv",
            caption="../report/models_summary.rst",
            category="Summary",
        ),
    log:
        f"{ROOT}/logs/summary/models.log",
    benchmark:
        f"{ROOT}/benchmarks/summary/models.tsv"
    conda:
        ENV
    params:
        # per input, the studies that use the model (comma-separated)
        studies=[",".join(studies) for studies in MODEL_STUDIES.values()],
    shell:
        "python -m segmia summary-models --out {output} {input} --studies {params.studies} 2> {log}"


rule reproduction:
    """Write REPRODUCTION.md: every table beside the author's logs, with figure links."""
    input:
        tables=[
            f"{ROOT}/{t}.md" for n in CFG["studies"] for t in plan.study_tables(CFG, n)
        ],
        # linked, not read: a redrawn figure does not rewrite the page
        figures=ancient(
            [f"{ROOT}/{f}" for n in CFG["studies"] for f in plan.study_figures(CFG, n)]
        ),
    output:
        report(
            f"{ROOT}/REPRODUCTION.md",
            caption="../report/reproduction.rst",
            category="Summary",
        ),
    log:
        f"{ROOT}/logs/reproduction.log",
    benchmark:
        f"{ROOT}/benchmarks/reproduction.tsv"
    conda:
        ENV
    params:
        studies=as_json(CFG["studies"]),
        tables=as_json(
            {
                n: [f"{ROOT}/{t}.md" for t in plan.study_tables(CFG, n)]
                for n in CFG["studies"]
            }
        ),
        figures=as_json(
            {
                n: [f"{ROOT}/{f}" for f in plan.study_figures(CFG, n)]
                for n in CFG["studies"]
            }
        ),
    shell:
        "python -m segmia reproduction --out {output} --studies {params.studies:q}"
        " --tables {params.tables:q} --figures {params.figures:q} 2> {log}"
