"""``python -m analysis report STUDY``: the report command without the zskt CLI."""

import sys

from .cli import main

sys.exit(main())
