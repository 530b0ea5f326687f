"""Names of the attacks (config values, path components) and their labels in tables/figures."""

#: learned on the shadow's outputs, applied to the victim's
LEARNED = ("type1", "type2", "loss_map", "loss_map_concat")
#: channels the loss-map attacks see (He et al.; "concat" adds the released map and the mask)
LOSS_MAP_PARTS = {"loss_map": ("loss",), "loss_map_concat": ("loss", "map", "mask")}
#: threshold attacks on a per-image aggregate of the loss map: the statistic (higher = member)
AGGREGATES = {
    "agg_mean": "neg_ce_mean",
    "agg_q50": "neg_loss_q50",
    "agg_q90": "neg_loss_q90",
    "agg_q99": "neg_loss_q99",
    "agg_fg": "neg_loss_fg_mean",
}
THRESHOLD = ("global_loss", *AGGREGATES)
#: need the K reference models of an attack_comparison study
REFERENCE = (
    "lira_online",
    "lira_offline",
    "lira_online_fixed",
    "lira_offline_fixed",
    "lira_online_loss",
    "rmia_online",
    "rmia_offline",
)
ATTACKS = (*LEARNED, *THRESHOLD, *REFERENCE)

LABELS = {
    "type1": "Type-I",
    "type2": "Type-II",
    "global_loss": "Global loss",
    "loss_map": "Loss map (He et al.)",
    "loss_map_concat": "Loss map + map + mask",
    "agg_mean": "Mean pixel loss",
    "agg_q50": "Median pixel loss",
    "agg_q90": "90% pixel-loss quantile",
    "agg_q99": "99% pixel-loss quantile",
    "agg_fg": "Mean foreground loss",
    "lira_online": "LiRA online",
    "lira_offline": "LiRA offline",
    "lira_online_fixed": "LiRA online, fixed var.",
    "lira_offline_fixed": "LiRA offline, fixed var.",
    "lira_online_loss": "LiRA online, mean loss",
    "rmia_online": "RMIA online",
    "rmia_offline": "RMIA offline",
}
FAMILY = {
    **dict.fromkeys(("type1", "type2", "loss_map", "loss_map_concat"), "learned"),
    "global_loss": "threshold",
    **dict.fromkeys(AGGREGATES, "per-image aggregate"),
    **dict.fromkeys(REFERENCE, "reference models"),
}
