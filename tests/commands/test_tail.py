"""Tests for poller.commands.tail: how an event reads on one line."""

from __future__ import annotations

from poller.commands.tail import KNOWN_TYPES, receivers_words, status_words
from poller.models import Receiver


class TestWords:
    def test_statuses_in_words(self) -> None:
        """task_status values read as the table's words, an unknown one as its number."""
        assert [status_words(v) for v in (0, 1, 2, 3, 9)] == [
            "awaiting feedback", "feedback given", "accepted", "feedback rejected", "status 9"]

    def test_receivers_by_name(self) -> None:
        """Added and removed receivers read as names (the id when unnamed), not Python lists."""
        added = (Receiver(id="u1", name="张三"), Receiver(id="u2"))
        removed = (Receiver(id="u3", name="王五"),)
        assert receivers_words(added, removed) == "+张三, u2 −王五"
        assert receivers_words((), removed) == "−王五"

    def test_known_types_cover_dead_letters_and_every_task_event(self) -> None:
        """--type accepts every task event and DeadLetter."""
        assert {"TaskCreated", "TaskAccepted", "FeedbackAdded", "DeadLetter"} <= set(KNOWN_TYPES)
