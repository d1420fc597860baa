"""`python -m poller.schemas`: regenerate the checked-in event schemas from the models."""

from __future__ import annotations

from poller.schemas import write

if __name__ == "__main__":
    for path in write():
        print(path)
