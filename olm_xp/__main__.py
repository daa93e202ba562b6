"""``python -m olm_xp`` is the ``olm-xp`` command."""

from olm_xp.cli import main

raise SystemExit(main())
