"""``python -m jaxmir``: the `jaxmir` command."""

import sys

from jaxmir.cli import entry

sys.exit(entry())
