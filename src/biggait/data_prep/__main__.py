"""`python -m biggait.data_prep <name> ...`: one readable error line for a bad name or missing data."""

from __future__ import annotations

import sys

from biggait.data_prep import main
from biggait.errors import exit_on_error

if __name__ == "__main__":
    with exit_on_error():
        sys.exit(main())
