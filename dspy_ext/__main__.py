"""``python -m dspy_ext`` is the ``dspy-ext`` command."""

import sys

from .cli import main  # this module is the command line's entry point (python -m dspy_ext)

sys.exit(main())
