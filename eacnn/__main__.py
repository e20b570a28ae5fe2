"""``python -m eacnn`` is the ``eacnn`` command."""

from .cli import main

raise SystemExit(main())
