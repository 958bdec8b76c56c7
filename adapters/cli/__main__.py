"""`python -m adapters.cli ...` is the `stagecut` command."""

from adapters.cli import main

raise SystemExit(main())
