"""``python -m drainwatch``: the same as the ``drainwatch`` command."""

from drainwatch.agent.cli import main

raise SystemExit(main())
