"""``python -m hotplug``: the same as the ``hotplug`` command."""

import sys

from hotplug.cli import main

sys.exit(main())
