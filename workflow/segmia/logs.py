"""Logging set-up of the command line (kept free of heavy imports: data steps need no torch)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def failed_jobs(snakemake_log: str) -> list[tuple[str, list[str]]]:
    """(rule, its job log files) of every "Error in rule" block of Snakemake's main log text."""
    failed, rule = [], None
    for line in snakemake_log.splitlines():
        stripped = line.strip()
        if stripped.startswith("Error in rule "):
            rule = stripped.removeprefix("Error in rule ").rstrip(":")
            failed.append((rule, []))
        elif rule and stripped.startswith("log: "):
            logs = stripped.removeprefix("log: ").split(" (check log")[0]
            failed[-1][1].extend(p.strip() for p in logs.split(", ") if p.strip())
            rule = None
    return failed


def failure_report(snakemake_log, tail: int = 6) -> str:
    """Where each failed job's log is, with its last lines (segmia's steps end a failure with a
    one-paragraph message saying what is wrong and how to fix it). ``snakemake_log``: the main
    log file(s) Snakemake hands to ``onerror`` (a path, a list of paths, or None)."""
    from pathlib import Path

    paths = [snakemake_log] if isinstance(snakemake_log, (str, Path)) else snakemake_log or []
    text = "\n".join(Path(p).read_text(errors="replace") for p in paths if Path(p).is_file())
    failed = failed_jobs(text)
    if not failed:
        return ""
    out = [f"\nsegmia: {len(failed)} job(s) failed; completed outputs are kept, rerun to resume."]
    for rule, logs in failed:
        for path in logs or ["(no log file)"]:
            out.append(f"  rule {rule}: log {path}")
            log = Path(path)
            if log.is_file():
                last = log.read_text(errors="replace").strip().splitlines()[-tail:]
                out += [f"    | {line}" for line in last]
    return "\n".join(out)
