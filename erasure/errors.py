"""The one exception type users see: a one-line message that names the fix."""

from __future__ import annotations

import argparse


class ErasureError(Exception):
    """Bad input or state the user can fix; the CLI prints it as one line and exits 2."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line naming the fix, like ``ErasureError``'s
    (plain argparse prints the whole usage block first), with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
