"""Names the split writes and the workflow matches (pools, the membership unit): no numpy, so the
command line and the Snakefile can import them cheaply."""

#: the pools a split assigns: the victim's and the attacker's (shadow)
POOLS = ("victim", "shadow")
#: the query set of reference models: the reference universe (``split.reference_universe``)
REFERENCE_POOL = "reference"
#: what a model can be queried on: a pool's MIA set, or the reference universe
QUERY_POOLS = (*POOLS, REFERENCE_POOL)
#: the query directory of a model's answers on its own pool's MIA set (a reference model's: the
#: reference universe), written by the job that trains it
OWN_QUERY = "mia"
#: values of ``split.groups``, the membership unit (the schema's enum is this tuple)
GROUPINGS = ("whole", "pools", "ordered", "none")
#: what a reference model draws IN or OUT whole (``reference_unit``)
REFERENCE_UNITS = ("group", "sample")


def reference_unit(sizes: dict) -> str:
    """What a reference model draws IN or OUT whole: ``group`` where the victim's membership is
    per group (``split.groups: whole``: every role holds whole groups), else ``sample`` (``pools``
    and ``none`` draw or lay out the roles per sample, ``ordered`` cuts them at sample counts)."""
    return "group" if sizes.get("groups", "whole") == "whole" else "sample"
