"""``python -m eacnn`` is the ``eacnn`` command."""

from eacnn.cli import main

raise SystemExit(main())
