"""``python -m runs.cli``: the ``runs`` command."""

from runs.cli.main import main

main()
