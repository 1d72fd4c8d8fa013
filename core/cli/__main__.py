"""``python -m m99.cli``: the same as the ``m99`` command."""

from . import main

main()
