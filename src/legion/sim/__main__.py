"""``python -m legion.sim``: run the provider simulator."""

from legion.sim.cli import main

raise SystemExit(main())
