"""Allow ``python -m medalloc``."""

from medalloc.cli import main

main()
