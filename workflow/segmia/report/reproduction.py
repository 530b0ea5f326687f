"""``REPRODUCTION.md``: every study's tables in one Markdown page, with links to its figures."""

from __future__ import annotations

import os
from pathlib import Path

from ..io import atomic_path
from .paper import REFERENCES

INTRO = """# Reproduction of "Membership Inference Attacks Against Semantic Segmentation Models"

Chobola, Usynin, Kaissis (AISec 2023, arXiv:2212.01082), reproduced by segmia from raw data.
Each section is one study of the config: its tables (mean ± standard deviation over seeds), the
author's logged numbers beside them where the study reproduces a paper table (marked *author's
logs*; the logged "AUC" of the original code is accuracy on hard predictions, so compare it with
the *acc.* columns), and links to its figures. Scores: ROC-AUC and TPR at low FPR are
threshold-free; accuracy follows the original protocol.
"""


def write_reproduction(
    out: str | Path, studies: dict, tables: dict[str, list[str]], figures: dict[str, list[str]]
) -> None:
    out = Path(out)
    parts = [INTRO]
    for name, study in studies.items():
        parts.append(f"## {name}\n")
        what = f"Study type `{study['type']}` on dataset `{study['dataset']}`."
        if study.get("paper"):
            what += f" Reproduces {REFERENCES[study['paper']]}."
        if study.get("caption"):
            what += f" {study['caption']}"
        parts.append(what + "\n")
        links = [
            f"[{Path(f).stem}]({os.path.relpath(f, out.parent)})" for f in figures.get(name, [])
        ]
        if links:
            parts.append("Figures: " + ", ".join(links) + "\n")
        for table in tables.get(name, []):
            text = Path(table).read_text()
            parts.append(
                text.replace("\n# ", "\n### ")
                .replace("\n## ", "\n#### ")
                .removeprefix("# ")
                .strip()
                + "\n"
            )
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts))
