"""``python -m orchestration`` is the ``roost`` command."""

from orchestration.cli import main

main()
