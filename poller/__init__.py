"""waiqin-poller: Waiqin365 customer tasks as a Kafka event stream."""

__version__ = "0.1.0"
