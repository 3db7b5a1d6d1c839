"""``python -m distilrubert`` = the ``distilrubert`` console script."""

from distilrubert.cli import main

raise SystemExit(main())
