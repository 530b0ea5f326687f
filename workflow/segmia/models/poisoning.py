"""Names of the poisoning variant (config values, path components, command-line choices): no
torch, so the command line and the Snakefile can import them cheaply (``variants.py`` applies them).
"""

#: where the trigger is written: ``square`` bottom-right k x k, ``line`` the bottom k rows
TRIGGERS = ("square", "line")
#: the mask of a poisoned sample: ``almost_empty`` background with one foreground pixel in the
#: top-left corner, ``empty`` background only
TARGETS = ("almost_empty", "empty")
