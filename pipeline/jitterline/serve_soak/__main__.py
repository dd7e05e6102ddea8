"""``python -m jitterline.serve_soak``: see the package docstring."""

import sys

from .run import main

sys.exit(main())
