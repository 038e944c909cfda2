"""
Entry point of the `trl-robust` console script, outside the `trl_robust` package on purpose: importing `trl_robust`
registers the BRME with transformers' Auto classes, which imports torch and transformers (seconds, more on a loaded
machine). This module asks the package to defer that for the one import it makes, so that `trl-robust --help` and
the errors of a bad recipe or command line come before those imports; `trl_robust.cli` registers the classes itself
before a command runs.
"""

import os


def main(argv: list[str] | None = None) -> int:
    os.environ["TRL_ROBUST_DEFER_REGISTRATION"] = "1"
    try:
        from trl_robust.cli import main as cli_main
    finally:  # only this import defers: a later `import trl_robust` elsewhere (a subprocess) registers as usual
        del os.environ["TRL_ROBUST_DEFER_REGISTRATION"]
    return cli_main(argv)
