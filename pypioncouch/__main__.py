"""``python -m pypioncouch``: the ``pypioncouch`` command."""

from pypioncouch.cli import main

main()
