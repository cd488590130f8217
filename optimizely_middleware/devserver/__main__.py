"""``python -m optimizely_middleware.devserver``: the ``optimizely-devserver`` command."""

import sys

from optimizely_middleware.devserver.cli import main

sys.exit(main())
