"""``python -m futurefsm``: the same as the ``futurefsm`` command."""

import sys

from .cli import main

sys.exit(main())
