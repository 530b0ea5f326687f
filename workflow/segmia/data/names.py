"""Names the split writes and the workflow matches (pools, the membership unit): no numpy, so the
command line and the Snakefile can import them cheaply."""

#: the pools a split assigns: the victim's and the attacker's (shadow)
POOLS = ("victim", "shadow")
#: the query set of reference models: the reference universe (``split.reference_universe``)
REFERENCE_POOL = "reference"
#: what a model can be queried on: a pool's MIA set, or the reference universe
QUERY_POOLS = (*POOLS, REFERENCE_POOL)
#: values of ``split.groups``, the membership unit (the schema's enum is this tuple)
GROUPINGS = ("whole", "pools", "ordered", "none")
