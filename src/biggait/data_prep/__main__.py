"""`python -m biggait.data_prep <name> ...`: one readable error line for a bad name or missing data."""

from __future__ import annotations

import sys

from biggait.data_prep import main
from biggait.errors import BiggaitError

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BiggaitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
