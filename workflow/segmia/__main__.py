import os
import sys

# A local Snakemake run names its warm worker here: the step then runs in a fork of it (no
# imports to pay), or here when none answers (segmia.warm).
if os.environ.get("SEGMIA_WARM"):
    from .warm import forward

    code = forward(sys.argv[1:], os.environ["SEGMIA_WARM"])
    if code is not None:
        sys.exit(code)

from .cli import main  # noqa: E402

sys.exit(main())
