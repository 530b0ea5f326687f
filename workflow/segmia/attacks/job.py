"""The attack steps: fit a learned attack on a shadow, evaluate attacks on a victim, and write
per-sample scores and metrics.

Attack families (``ATTACKS``):

- learned (fit on the shadow's MIA set, applied to the victim's): ``type1``, ``type2``,
  ``loss_map`` (He et al.: patches of the per-pixel cross-entropy map), ``loss_map_concat`` (the
  loss map concatenated with the released map and the one-hot mask);
- threshold: ``global_loss`` (the study's: per-image Dice loss against the shadow's last-epoch
  mean training loss) and the loss-map aggregates ``agg_*`` (mean, quantiles, foreground-only
  mean of the per-pixel loss; threshold chosen on the shadow's MIA set);
- reference-model attacks on K reference models: ``lira_online``, ``lira_offline``,
  ``lira_online_fixed``, ``lira_offline_fixed`` (fixed variance), ``lira_online_loss`` (online
  LiRA on the mean per-pixel loss instead of the logit-scaled confidence), ``rmia_online``,
  ``rmia_offline``.

An evaluation directory holds ``scores.csv`` (``sample_id``, ``member``, ``score``: higher means
"member") and ``metrics.json``: score-based metrics on the victim's MIA set (``auc`` with a
bootstrap 95% CI, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr``, ``balanced_accuracy``) and the
paper's protocol (``accuracy``, ``f1``: learned attacks averaged over the last k attack epochs;
threshold attacks at their threshold; reference attacks at likelihood ratio 1 / score 0.5). The
intervals resample the membership unit (``group`` column: patient, city, or the image), and the
null control (``null_auc`` with its interval, ``null_half`` column) is the same scores' AUC between
two random halves of the non-member groups (``metrics.null_control``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.names import OWN_QUERY, REFERENCE_POOL
from ..io import read_csv, read_json, read_torch, write_csv, write_json, write_torch
from ..models.losses import per_image_dice_loss
from ..models.weights import attack_file, require
from ..protocol import SEGMIA
from ..runtime import Checkpoint, stable_seed
from .classifier import build_classifier, learned_inputs, score_attack, train_attack, with_weights
from .features import feature_channels
from .metrics import (
    bootstrap_cis,
    null_control,
    resolvable_fpr,
    roc_metrics,
    threshold_metrics,
)
from .names import AGGREGATES, LEARNED, LOSS_MAP_PARTS
from .outputs import QuerySet
from .release import release

log = logging.getLogger("segmia")

# --- learned attacks ----------------------------------------------------------------------------


def learned_attack(
    kind: str,
    recipe: dict,
    shape: tuple[int, ...],
    release_spec: dict,
    seed: int,
    device: torch.device,
    weights=None,
):
    """(attack model, input builder) of the learned attack ``kind`` for maps of ``shape``
    (N, C, H, W), ready for ``train_attack`` and ``score_attack``; ``weights``: the classifier's
    local ImageNet weight file, when fitting a pretrained one."""
    if kind in LOSS_MAP_PARTS:
        from .loss_map import build_loss_map_attack, loss_map_channels, loss_map_inputs

        parts = LOSS_MAP_PARTS[kind]
        model = build_loss_map_attack(
            recipe, loss_map_channels(parts, shape[1]), tuple(shape[2:]), weights
        ).to(device)
        return model, loss_map_inputs(
            model, parts, release_spec, seed, device, float(recipe.get("loss_floor", 1e-6))
        )
    model = build_classifier(recipe, feature_channels(kind, shape[1]), weights).to(device)
    return model, learned_inputs(kind, release_spec, device)


def fit_attack_job(
    *,
    shadow_query: str | Path,
    data_dir: str | Path,
    spec: dict,
    out_dir: str | Path,
    device: torch.device,
    weights=None,
) -> None:
    """Train the learned attack ``spec['attack']`` on the shadow model's MIA set; ``weights``:
    the local ImageNet weight file of a pretrained ResNet classifier (required then)."""

    out_dir = Path(out_dir)
    query = QuerySet(shadow_query, data_dir)
    kind, recipe = spec["attack"], spec["recipe"]
    require(attack_file(recipe), weights, "the attack classifier")
    seed = stable_seed("attack", spec["shadow"], kind, spec["release_name"])
    torch.manual_seed(seed)
    model, inputs = learned_attack(
        kind, recipe, query.logits.shape, spec["release"], seed, device, weights
    )
    model, snapshots, rows = train_attack(
        model, query, inputs, recipe, seed, out_dir, spec, device, f"attack {kind}"
    )
    train_scores = score_attack(model, query, inputs, device)
    fit_metrics = {
        **roc_metrics(query.labels, train_scores),
        **threshold_metrics(query.labels, train_scores > 0.0),
    }
    write_torch(out_dir / "attack.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    write_torch(out_dir / "snapshots.pt", snapshots)
    write_json(out_dir / "spec.json", {**spec, "seed": seed, "shape": list(query.logits.shape)})
    write_csv(out_dir / "history.csv", pd.DataFrame(rows))
    write_json(
        out_dir / "metrics.json",
        {
            "shadow_fit": fit_metrics,
            "epochs": len(rows),
            "seconds": sum(r["seconds"] for r in rows),
        },
    )
    Checkpoint(out_dir, spec).clear()
    log.info(
        "attack %s fitted on the shadow: AUC %.3f on its own training data",
        kind,
        fit_metrics["auc"],
    )


def eval_attack_job(
    *,
    attack_dir: str | Path,
    victim_query: str | Path,
    data_dir: str | Path,
    spec: dict,
    out_dir: str | Path,
    device: torch.device,
) -> dict:
    """Apply a fitted learned attack to the victim's MIA set."""
    attack_dir, out_dir = Path(attack_dir), Path(out_dir)
    fitted = read_json(attack_dir / "spec.json")
    query = QuerySet(victim_query, data_dir)
    model, inputs = learned_attack(
        spec["attack"],
        fitted["recipe"],
        tuple(fitted["shape"]),
        spec["release"],
        fitted["seed"],
        device,
    )
    model.load_state_dict(read_torch(attack_dir / "attack.pt"))
    scores = score_attack(model, query, inputs, device)
    per_epoch = [
        threshold_metrics(
            query.labels, score_attack(with_weights(model, snap), query, inputs, device) > 0.0
        )
        for snap in read_torch(attack_dir / "snapshots.pt")
    ]
    protocol = {k: float(np.mean([m[k] for m in per_epoch])) for k in ("accuracy", "f1")}
    return write_evaluation(
        out_dir,
        spec,
        query.sample_ids,
        query.labels,
        scores,
        scores > 0.0,
        protocol,
        groups=query.groups,
    )


# --- threshold attacks --------------------------------------------------------------------------


def _released_statistic(query: QuerySet, kind: str, release_spec: dict) -> np.ndarray:
    """Per-image attack statistic of a query set (higher = member)."""
    if kind == "global_loss":
        out = []
        for start in range(0, len(query), 128):
            logits, masks, ids = query.batch(np.arange(start, min(start + 128, len(query))))
            out.append(
                -per_image_dice_loss(release(logits, release_spec, ids), masks, query.ignore_index)
            )
        return torch.cat(out).numpy().astype(np.float64)
    from .statistics import query_statistic

    return query_statistic(
        query, AGGREGATES[kind], None if release_spec["type"] == "none" else release_spec
    )


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (member if score >= it) with the best accuracy on labelled data."""
    order = np.unique(scores)
    candidates = np.r_[order, order[-1] + 1.0] if len(order) else np.array([0.0])
    accuracy = [np.mean((scores >= t) == labels) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def threshold_attack_job(
    *,
    kind: str,
    shadow_model: str | Path,
    victim_query: str | Path,
    data_dir: str | Path,
    spec: dict,
    out_dir: str | Path,
    shadow_query: str | Path | None = None,
) -> dict:
    """Global-loss or loss-map aggregate attack on the victim's MIA set.

    Global loss thresholds at the shadow's last-epoch mean training loss (the study's protocol);
    the aggregates at the best threshold on the shadow's own MIA set, as queried in
    ``shadow_query`` (default: its clean query; a triggered query's attack passes the shadow's
    triggered one).
    """
    query = QuerySet(victim_query, data_dir)
    scores = _released_statistic(query, kind, spec["release"])
    if kind == "global_loss":
        # protocol "threshold": the shadow's last-epoch loss weighted by batch size (segmia) or
        # the unweighted mean of its batch losses (the original)
        key = (
            "train_loss_batch_mean"
            if spec.get("protocol", {}).get("threshold") == "batch_mean"
            else "train_loss"
        )
        threshold = -read_json(Path(shadow_model) / "metrics.json")[key]
    else:
        shadow = QuerySet(shadow_query or Path(shadow_model) / "queries" / OWN_QUERY, data_dir)
        threshold = best_threshold(
            shadow.labels, _released_statistic(shadow, kind, spec["release"])
        )
    predictions = scores >= threshold
    protocol = threshold_metrics(query.labels, predictions)
    return write_evaluation(
        Path(out_dir),
        spec,
        query.sample_ids,
        query.labels,
        scores,
        predictions,
        protocol,
        groups=query.groups,
    )


def evaluate_job(
    *,
    specs: dict[str, dict],
    victim_query: str | Path,
    shadow_model: str | Path,
    shadow_query: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    device: torch.device | None,
    attack_models: dict[str, str | Path] | None = None,
) -> dict[str, dict]:
    """Every attack of one evaluation group (one victim, one shadow, one release) in one process:
    ``specs`` maps each evaluation's directory name in ``out_dir`` (the attack with its protocol
    token) to its spec; a learned attack applies its fitted model (``attack_models``), a
    threshold attack calibrates on the shadow. ``device``: the learned attacks' (threshold attacks
    run on the CPU)."""
    out_dir, attack_models = Path(out_dir), attack_models or {}
    results = {}
    for attack, spec in specs.items():
        kind = spec["attack"]
        if kind in LEARNED:
            if attack not in attack_models:
                from ..errors import SegmiaError

                raise SegmiaError(
                    f"the learned attack {attack!r} needs its fitted model: pass "
                    f"--attack-models {attack}=<dir> (the fit-attack step's output directory)."
                )
            results[attack] = eval_attack_job(
                attack_dir=attack_models[attack],
                victim_query=victim_query,
                data_dir=data_dir,
                spec=spec,
                out_dir=out_dir / attack,
                device=device,
            )
        else:
            results[attack] = threshold_attack_job(
                kind=kind,
                shadow_model=shadow_model,
                victim_query=victim_query,
                data_dir=data_dir,
                spec=spec,
                out_dir=out_dir / attack,
                shadow_query=shadow_query,
            )
    return results


# --- reference-model attacks --------------------------------------------------------------------


def reference_attacks_job(
    *,
    victim: str | Path,
    references: list[str | Path],
    data_dir: str | Path,
    spec: dict,
    out_dirs: dict[str, str | Path],
) -> dict[str, dict]:
    """LiRA (online, offline, fixed variance) and RMIA (online, offline) on K reference models.

    ``victim`` and ``references`` are model directories, each with its answers on the reference
    universe (a victim's ``queries/reference``, a reference model's own ``queries/mia``) and
    ``members.csv`` (its training rows). The
    statistic of LiRA is ``spec['statistic']`` (default: logit-scaled mean per-pixel confidence of
    the true label), RMIA's ``spec['rmia_statistic']`` (mean per-pixel true-class probability).
    RMIA's population is ``spec['rmia_population']`` (``all`` or m) of the universe's population
    samples, its offline a ``spec['rmia_a']`` (a number, or ``tune``: :func:`rmia_offline_a`);
    both RMIA evaluations record m and the score resolution 1/m, the offline one its a (and the
    tuning grid's AUCs) in metrics.json.
    """
    from .lira import lira_offline, lira_online
    from .rmia import rmia_scores
    from .statistics import query_statistic

    release_spec = None if spec["release"]["type"] == "none" else spec["release"]
    target_query = QuerySet(Path(victim) / "queries" / REFERENCE_POOL, data_dir)
    universe = target_query.samples
    is_target = (universe["part"] == "target").to_numpy()
    is_population = (universe["part"] == "population").to_numpy()
    queries = [QuerySet(Path(r) / "queries" / OWN_QUERY, data_dir) for r in references]
    for q in queries:
        if not q.samples["row"].equals(universe["row"]):
            from ..errors import DataError

            raise DataError(
                f"{q.dir} was queried on another reference universe than {target_query.dir}; rerun its query step."
            )
    keep = np.stack(
        [
            universe["row"]
            .isin(read_csv(Path(r) / "members.csv", required=("row",))["row"])
            .to_numpy()
            for r in references
        ]
    )

    lira_stat = spec.get("statistic", "logit_confidence")
    x = query_statistic(target_query, lira_stat, release_spec)
    ref = np.stack([query_statistic(q, lira_stat, release_spec) for q in queries])
    rmia_stat = spec.get("rmia_statistic", "mean_confidence")
    px = query_statistic(target_query, rmia_stat, release_spec)
    pref = np.stack([query_statistic(q, rmia_stat, release_spec) for q in queries])

    t = is_target
    scores = {
        "lira_online": lira_online(x[t], ref[:, t], keep[:, t], fix_variance=False),
        "lira_online_fixed": lira_online(x[t], ref[:, t], keep[:, t], fix_variance=True),
        "lira_offline": lira_offline(x[t], ref[:, t], keep[:, t], fix_variance=False),
        "lira_offline_fixed": lira_offline(x[t], ref[:, t], keep[:, t], fix_variance=True),
    }
    # the same online LiRA on the negative mean per-pixel loss, to compare the two statistics
    loss_x = query_statistic(target_query, "neg_ce_mean", release_spec)
    loss_ref = np.stack([query_statistic(q, "neg_ce_mean", release_spec) for q in queries])
    scores["lira_online_loss"] = lira_online(
        loss_x[t], loss_ref[:, t], keep[:, t], fix_variance=False
    )
    gamma = float(spec.get("rmia_gamma", 1.0))
    pop = rmia_population(np.flatnonzero(is_population), spec.get("rmia_population", "all"), spec)
    a, grid = rmia_offline_a(spec.get("rmia_a", "tune"), pref, keep, ~is_population, pop, gamma)
    for mode in ("online", "offline"):
        scores[f"rmia_{mode}"] = rmia_scores(
            px[t],
            pref[:, t],
            keep[:, t],
            px[pop],
            pref[:, pop],
            mode=mode,
            a=a,
            gamma=gamma,
            population_keep=keep[:, pop],
        )
    # RMIA's scores are multiples of 1/m (m population samples): ties below that resolution
    rmia = {"rmia_population": len(pop), "score_resolution": 1.0 / len(pop)}
    extras = {
        "rmia_online": rmia,
        "rmia_offline": {**rmia, "rmia_a": a, "rmia_a_grid": grid},
    }
    labels = universe.loc[t, "member"].to_numpy()
    ids = universe.loc[t, "sample_id"].astype(str).tolist()
    groups = target_query.groups[t]
    results = {}
    for name, out in out_dirs.items():
        s = np.asarray(scores[name], dtype=np.float64)
        cut = 0.5 if name.startswith("rmia") else 0.0
        predictions = s > cut
        results[name] = write_evaluation(
            Path(out),
            {**spec, "attack": name},
            ids,
            labels,
            s,
            predictions,
            threshold_metrics(labels, predictions),
            groups=groups,
            extra=extras.get(name),
        )
    return results


def rmia_population(population: np.ndarray, size: int | str, spec: dict) -> np.ndarray:
    """Positions of RMIA's population samples: ``all`` of ``population``, or the first ``size``
    of them in an order seeded by the evaluation's seed (a smaller m is a subset of a larger)."""
    if size == "all":
        return population
    if not 1 <= int(size) <= len(population):
        from ..errors import DataError

        raise DataError(
            f"rmia_population is {size}, but the reference universe holds {len(population)} "
            "population samples (the attacker pool's validation and held-out samples). Lower "
            "rmia_population or use all."
        )
    rng = np.random.default_rng(stable_seed("rmia_population", spec["seed"]))
    return np.sort(rng.permutation(population)[: int(size)])


def rmia_offline_a(
    a: float | str,
    reference: np.ndarray,
    keep: np.ndarray,
    candidates: np.ndarray,
    population: np.ndarray,
    gamma: float,
) -> tuple[float, dict[str, float] | None]:
    """(offline a, {a: mean AUC} of the grid, or None for a given ``a``). ``tune``: every
    reference model in turn is attacked by the others on the candidates (targets and filler, whose
    membership in it is known) with offline RMIA, and the a of the best mean AUC is taken (RMIA
    paper, App. B); the victim's membership is never used."""
    from .rmia import tune_offline_a

    if a != "tune":
        log.info("RMIA offline a = %g (given)", float(a))
        return float(a), None
    best, aucs = tune_offline_a(
        reference[:, candidates],
        keep[:, candidates],
        reference[:, population],
        gamma=gamma,
        pseudo_targets=range(len(reference)),
        population_keep=keep[:, population],
    )
    log.info(
        "RMIA offline a = %g, tuned with each of %d reference models as the target (mean AUC "
        "%.3f; grid %s)",
        best,
        len(reference),
        aucs[best],
        ", ".join(f"{v:g}: {auc:.3f}" for v, auc in aucs.items()),
    )
    return best, {f"{v:g}": auc for v, auc in aucs.items()}


# --- writing ------------------------------------------------------------------------------------


def write_evaluation(
    out_dir: Path,
    spec: dict,
    sample_ids: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    predictions: np.ndarray,
    protocol: dict,
    groups: np.ndarray | None = None,
    extra: dict | None = None,
) -> dict:
    """metrics.json and scores.csv of an evaluation; ``groups``: each sample's membership unit
    (patient, city), which the bootstrap intervals resample (None: the samples themselves);
    ``extra``: attack-specific entries of metrics.json (RMIA's a and population size)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    cis = bootstrap_cis(
        labels, scores, seed=stable_seed(spec["attack"], spec["seed"]), groups=groups
    )
    n_groups = len(labels) if groups is None else len(set(groups))
    # the same split of the non-member groups for every attack on this MIA set
    null, halves = null_control(
        labels, scores, groups, seed=stable_seed("null", spec["dataset"], spec["seed"])
    )
    metrics = {
        **{k: spec[k] for k in ("dataset", "attack", "release_name", "seed", "train_size")},
        "victim_arch": spec["victim"]["arch"],
        "victim_variant": spec["victim"]["variant"],
        "shadow_arch": spec["shadow"]["arch"],
        "shadow_variant": spec["shadow"]["variant"],
        **roc_metrics(labels, scores),
        **cis,
        # the bootstrap's unit: whole groups when samples share them, else the samples
        "ci_unit": "group" if n_groups < len(labels) else "sample",
        "ci_groups": n_groups,
        "resolvable_fpr": resolvable_fpr(int((1 - labels).sum())),
        **null,
        "balanced_accuracy": threshold_metrics(labels, predictions)["balanced_accuracy"],
        "accuracy": protocol["accuracy"],
        "f1": protocol["f1"],
        "n_members": int(labels.sum()),
        "n_nonmembers": int((1 - labels).sum()),
        **{**SEGMIA, **spec.get("protocol", {})},  # the protocol switches it ran under
        **(extra or {}),
    }
    write_csv(
        out_dir / "scores.csv",
        pd.DataFrame(
            {
                "sample_id": sample_ids,
                "member": labels,
                "score": scores,
                **({} if groups is None else {"group": groups}),
                # the null control's half of each non-member (empty for members)
                "null_half": _null_column(labels, halves),
            }
        ),
    )
    write_json(out_dir / "metrics.json", metrics)
    log.info(
        "%s on victim %s/%s: AUC %.3f [%.3f, %.3f] (95 %% CI over %d %ss), TPR@1%%FPR %.3f, "
        "accuracy (paper protocol) %.3f; null control (two halves of %d non-member groups) "
        "AUC %.3f [%.3f, %.3f]%s",
        spec["attack"],
        spec["victim"]["arch"],
        spec["victim"]["variant"],
        metrics["auc"],
        metrics["auc_ci_low"],
        metrics["auc_ci_high"],
        n_groups,
        metrics["ci_unit"],
        metrics["tpr_at_1pct_fpr"],
        metrics["accuracy"],
        metrics["null_groups"],
        metrics["null_auc"],
        metrics["null_auc_ci_low"],
        metrics["null_auc_ci_high"],
        " (excludes chance: the scores separate groups)" if metrics["null_excludes_chance"] else "",
    )
    return metrics


def _null_column(labels: np.ndarray, halves: np.ndarray | None) -> pd.Series:
    column = pd.Series(pd.NA, index=range(len(labels)), dtype="Int64")
    if halves is not None:
        column[np.flatnonzero(labels == 0)] = halves
    return column
