"""Allow ``python -m medalloc_core.cli``."""

from medalloc_core.cli import main

main()
