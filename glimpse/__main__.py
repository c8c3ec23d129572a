"""``python -m glimpse``: the same click group as the ``glimpse`` console script."""

from glimpse.cli import main

main()
