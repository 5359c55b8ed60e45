"""``python -m dimse``: the same command-line tools as the ``dimse`` console script."""

from dimse.cli import main

raise SystemExit(main())
