"""``python -m dspy_ext`` is the ``dspy-ext`` command."""

import sys

from dspy_ext.cli import main

sys.exit(main())
