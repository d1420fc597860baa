"""Entry point for `python -m poller`."""

from poller.cli import main

main()
