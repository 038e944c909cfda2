"""`python -m trl_robust_cli`: the `trl-robust` command."""

import sys

from trl_robust_cli import main

sys.exit(main())
