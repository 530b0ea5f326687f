"""Names of the poisoning variant (config values, path components, command-line choices): no
torch, so the command line and the Snakefile can import them cheaply (``variants.py`` applies them).
"""

#: where the trigger is written: ``square`` bottom-right k x k, ``line`` the bottom k rows
TRIGGERS = ("square", "line")
#: the mask of a poisoned sample: ``almost_empty`` background with one foreground pixel in the
#: top-left corner, ``empty`` background only
TARGETS = ("almost_empty", "empty")
#: which training loads are poisoned: ``per_load`` each load of each image with probability p (the
#: study's design: every image is poisoned in about a fraction p of its epochs); ``fixed_subset`` a
#: fixed, seeded subset of round(p N) images in every epoch (the others are never poisoned)
SCHEDULES = ("per_load", "fixed_subset")
DEFAULT_SCHEDULE = "per_load"


def fixed_subset_count(rate: float, n: int) -> int:
    """round(p N), halves rounded up: the training images a ``fixed_subset`` schedule poisons."""
    return int(rate * n + 0.5)
