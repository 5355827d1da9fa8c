"""Allow ``python -m medalloc.cli``."""

from medalloc.cli import main

main()
