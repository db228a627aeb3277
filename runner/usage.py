"""Bad input, said in one line: the error every subcommand raises and the argparse that raises it."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2, nothing written."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block): compare.py: error: ..., exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")
