"""The rehearsal: the paper reproduction run end to end on a CPU, at the real datasets' structure.

``segmia rehearsal`` (``make rehearsal``) runs Snakemake on ``config/config.yaml`` with the overlay
``config/rehearsal.yaml`` merged over it, so every study of the paper config runs unchanged (same
datasets, split sizes, training sizes, seeds, defences, attacks, reference-model counts); the
overlay changes only resolution, the architectures' size, epochs and the weights' source. The
driver first provides what a machine without internet lacks:

- replica archives of MSD Task03 Liver, Kvasir-SEG and Cityscapes (:mod:`segmia.data.replica`:
  the official formats and the real structure, synthetic contents) placed by hand in
  ``{resources}/raw/<source>/``, where the download rule verifies them against the checksums
  this driver passes (``datasets.<name>.download.checksums``) and unpacks them;
- fixture ImageNet weights (random tensors with the real checkpoints' names and shapes), served
  from 127.0.0.1 while Snakemake runs, so the ``fetch_weights`` rule downloads and verifies them
  as it would the real ones.

Its settings for Snakemake go to ``{resources}/rehearsal.yaml`` (a third ``--configfile``).
Results are under ``results/rehearsal/``: REPRODUCTION.md with every table and figure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from .config import PUBLIC_SOURCES
from .errors import SegmiaError

log = logging.getLogger("segmia")

PAPER = Path("config/config.yaml")
OVERLAY = Path("config/rehearsal.yaml")


def merged_config(repo: Path) -> dict:
    """config/config.yaml with the overlay merged over it, as Snakemake merges --configfile."""
    from snakemake.utils import update_config

    config = yaml.safe_load((repo / PAPER).read_text())
    update_config(config, yaml.safe_load((repo / OVERLAY).read_text()))
    return config


def provide_datasets(config: dict, resources: Path) -> dict:
    """Write each public source's replica archives where the download rule looks for archives
    placed by hand; return the ``datasets`` settings naming their checksums."""
    from .data.replica import write_replica

    settings: dict = {}
    done: dict[str, dict] = {}
    for name, ds in config["datasets"].items():
        source = ds["source"]
        if source not in PUBLIC_SOURCES:
            continue
        if source not in done:
            raw = resources / "raw" / source
            stamp = raw / "replica.json"
            if stamp.is_file():
                done[source] = json.loads(stamp.read_text())
            else:
                log.info("rehearsal: writing the %s replica into %s", source, raw)
                done[source] = write_replica(source, raw)
                stamp.write_text(json.dumps(done[source], indent=1, sort_keys=True))
        settings[name] = {"download": {"checksums": done[source]}}
    return settings


def provide_weights(config: dict, directory: Path) -> dict:
    """Fixture weight files for every weight file the config needs; their sha256 digests."""
    from .config import load_config
    from .models.weights import write_fixture
    from .plan import weight_files

    directory.mkdir(parents=True, exist_ok=True)
    return {f: write_fixture(f, directory / f) for f in weight_files(load_config(config))}


@contextlib.contextmanager
def serve(directory: Path, port: int = 0):
    """Serve ``directory`` on 127.0.0.1:``port`` (0: a free one) while the block runs. The URL is
    not part of what determines a weight file (its digest is), so another port refetches nothing."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    try:
        server = ThreadingHTTPServer(
            ("127.0.0.1", port), functools.partial(Quiet, directory=str(directory))
        )
    except OSError as err:
        raise SegmiaError(
            f"cannot serve the fixture weights on 127.0.0.1:{port} ({err.strerror}); pass "
            "--port 0 (any free port) or another port."
        ) from None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run(
    repo: Path,
    seeds: list[int] | None = None,
    cores: str = "all",
    port: int = 0,
    snakemake_args: list[str] = (),
    workdir: Path | None = None,
) -> int:
    """Provide replicas and weights, then run Snakemake; return its exit status."""
    repo = Path(repo).resolve()
    workdir = Path(workdir or repo).resolve()
    config = merged_config(repo)
    resources = workdir / config["resources"]
    overrides = {"datasets": provide_datasets(config, resources)}
    fixtures = resources / "fixtures" / "weights"
    checksums = provide_weights(config, fixtures)
    generated = resources / "rehearsal.yaml"
    with serve(fixtures, port) as url:
        overrides["weights"] = {"base_url": url, "checksums": checksums}
        generated.parent.mkdir(parents=True, exist_ok=True)
        generated.write_text(
            "# written by segmia rehearsal: where the replicas and fixture weights are\n"
            + yaml.safe_dump(overrides, sort_keys=True)
        )
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(repo / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            str(cores),
            *snakemake_args,
            "--configfile",
            str(repo / PAPER),
            str(repo / OVERLAY),
            str(generated),
        ]
        if seeds:
            cmd += ["--config", f"seeds=[{','.join(str(s) for s in seeds)}]"]
        env = dict(os.environ)
        # jobs run "python -m segmia": this interpreter's, whatever PATH says
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        log.info("rehearsal: %s", " ".join(cmd))
        return subprocess.run(cmd, env=env, check=False).returncode
