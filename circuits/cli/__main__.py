"""``python -m circuits.cli`` (and ``torchrun ... -m circuits.cli``)."""

import sys

from circuits.cli import main

sys.exit(main())
