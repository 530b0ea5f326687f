"""The project's docs: self-contained, links that resolve, a deviation table that names real keys
and tests."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "docs" / "protocol.md"
DOCS = ["README.md", "config/README.md", "results/README.md", "docs/protocol.md"]
#: references to notes outside the repository (spelled so this file does not match itself)
OUTSIDE = re.compile(rb"PAPER\.md|DESIGN\.md|\.\./" + rb"shared")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
KEY = re.compile(r"^[a-z_]+(?:\.(?:<[a-z]+>|[a-z_]+))+$")


def repository_files() -> list[str]:
    """Tracked files and new files git does not ignore."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [line for line in out.splitlines() if line]


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    return [
        line.lstrip("#").strip()
        for line in path.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    ]


def test_no_file_refers_to_notes_outside_the_repository():
    offenders = []
    for name in repository_files():
        path = REPO / name
        if name == "tests/test_docs.py" or not path.is_file():
            continue
        if OUTSIDE.search(path.read_bytes()):
            offenders.append(name)
    assert not offenders, f"files citing notes outside the repository: {offenders}"


@pytest.mark.parametrize("doc", DOCS)
def test_relative_markdown_links_resolve(doc):
    source = REPO / doc
    broken = []
    for target in LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if (
            not path.exists()
            or fragment
            and path.suffix == ".md"
            and fragment not in map(anchor, headings(path))
        ):
            broken.append(target)
    assert not broken, f"{doc}: links to missing files or sections: {broken}"


def test_protocol_sections_named_in_the_repository_exist():
    names = headings(PROTOCOL)
    missing = []
    for name in repository_files():
        path = REPO / name
        if not path.is_file() or path.suffix not in {".py", ".md", ".yaml", ".rst", ".smk"}:
            continue
        text = path.read_text(errors="replace").replace("\n", " ")
        for section in re.findall(r"docs/protocol\.md,? [\"']([^\"']+)[\"']", text):
            if not any(h.startswith(section) for h in names):
                missing.append((name, section))
    assert not missing, f"sections of docs/protocol.md that do not exist: {missing}"


def _deviation_rows() -> tuple[list[str], list[list[str]]]:
    """(header cells, rows) of the table under "### With a switch"."""
    lines = PROTOCOL.read_text().split("### With a switch", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    return cells(table[0]), [cells(line) for line in table[2:]]


def _schema_properties() -> set[str]:
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                names.update(node["properties"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return names


def test_deviation_switches_are_config_keys():
    header, rows = _deviation_rows()
    column = next(i for i, c in enumerate(header) if c.startswith("switch"))
    properties = _schema_properties()
    keys, unknown = [], []
    for row in rows:
        for span in re.findall(r"`([^`]+)`", row[column]):
            key = span.split(":", 1)[0].strip()
            if not KEY.match(key):
                continue
            keys.append(key)
            unknown += [
                f"{key} ({part})"
                for part in key.split(".")
                if not part.startswith("<") and part not in properties
            ]
    assert len(keys) >= 10, f"the switch column names too few keys: {keys}"
    assert not unknown, f"switches that are not config keys: {unknown}"


def test_deviation_tests_exist():
    header, rows = _deviation_rows()
    column = next(i for i, c in enumerate(header) if c.startswith("test"))
    defined = set()
    for path in (REPO / "tests").glob("test_*.py"):
        defined.update(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    named = [n for row in rows for n in re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", row[column])]
    assert named, "the deviation table names no test"
    assert not set(named) - defined, f"tests that do not exist: {sorted(set(named) - defined)}"


def using_it_commands() -> list[str]:
    """The backticked commands of the README's "Using it" table, as written."""
    text = (REPO / "README.md").read_text()
    table = text.split("## Using it", 1)[1].split("\n\n", 2)[1]
    return [
        c for row in table.splitlines()[2:] for c in re.findall(r"`([^`]+)`", row.split("|")[2])
    ]


@pytest.mark.slow
def test_every_command_of_the_readme_table_runs_as_written(tmp_path):
    """Snakemake commands run as written plus -n (a dry run writes only .snakemake/ metadata),
    make targets as make -n, segmia commands as they are; a target placed after --configfile
    would be read as a config file and fail."""
    import shlex
    import sys

    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    ran = 0
    for command in using_it_commands():
        words = shlex.split(command)
        if "..." in words:  # a template ("segmia train --data ... ")
            continue
        if words[0] == "snakemake":
            if "--report" in words:
                continue  # needs finished results; tests/test_workflow.py builds a report
            words = [words[0], "-n", *words[1:]]
        elif words[0] == "make":
            words = ["make", "-n", *words[1:]]
        proc = subprocess.run(words, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        ran += 1
    assert ran >= 6


def test_every_rule_has_a_one_line_docstring():
    """`snakemake --list-rules` shows what each rule does."""
    import re

    rules = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for name, doc in re.findall(r"^rule (\w+):\n(.*)$", path.read_text(), re.M):
            rules[name] = doc.strip()
    assert len(rules) >= 19, sorted(rules)
    missing = [n for n, doc in rules.items() if not re.fullmatch(r'"""[^"\n]+"""', doc)]
    assert not missing, missing
