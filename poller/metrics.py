"""Every Prometheus metric of the poller, declared once (waiqin_poller_<thing>_<unit>)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CYCLES = Counter("waiqin_poller_cycles_total", "Poll cycles by outcome.", ["outcome"])
CYCLE_DURATION = Histogram(
    "waiqin_poller_cycle_duration_seconds", "Wall time of one poll cycle.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
API_REQUESTS = Counter(
    "waiqin_poller_api_requests_total", "Waiqin365 API requests by endpoint and outcome.",
    ["endpoint", "outcome"],  # outcome: ok, unavailable, auth, error
)
API_LATENCY = Histogram(
    "waiqin_poller_api_request_duration_seconds", "Waiqin365 API request latency.", ["endpoint"],
)
API_RETRIES = Counter(
    "waiqin_poller_api_retries_total", "API requests retried, by endpoint.", ["endpoint"],
)
API_AUTH_FAILURES = Counter(
    "waiqin_poller_api_auth_failures_total", "API auth refusals (openid/appkey, IP, grants).",
    ["endpoint"],
)
TASK_TYPES_REFUSED = Gauge(
    "waiqin_poller_task_types_refused",
    "1 while queryTaskType is refused and events go out without type names.",
)
TASKS_FETCHED = Counter("waiqin_poller_tasks_fetched_total", "Task records read from the API.")
TASKS_CHANGED = Counter("waiqin_poller_tasks_changed_total", "Tasks whose observation produced events.")
EVENTS_PUBLISHED = Counter(
    "waiqin_poller_events_published_total", "Events acknowledged by Kafka, by type.", ["type"],
)
EVENTS_TRUNCATED = Counter(
    "waiqin_poller_events_truncated_total",
    "Records cut to fit KAFKA_MAX_MESSAGE_BYTES (texts shortened, deep nesting replaced), by type.",
    ["type"],
)
DEAD_LETTERS = Counter(
    "waiqin_poller_dead_letters_total", "Records sent to the dead-letter topic, by reason.", ["reason"],
)
PUBLISH_FAILURES = Counter(
    "waiqin_poller_publish_failures_total", "Publish attempts that Kafka did not acknowledge.", ["error"],
)
SCAN_REPEATS = Counter(
    "waiqin_poller_scan_repeats_total", "Tasks read twice within one scan (pagination drift).",
)
SKIPS_HEALED = Counter(
    "waiqin_poller_scan_skips_healed_total",
    "Changes found late because an earlier scan skipped the task (pagination drift, healed).",
)
WINDOW_HELD = Counter(
    "waiqin_poller_window_held_total",
    "Cycles whose window start could not advance because the scan saw repeats.",
)
WINDOW_DAYS = Gauge("waiqin_poller_window_days", "Days in the current modify-date window.")
LAST_SUCCESS = Gauge(
    "waiqin_poller_last_success_timestamp_seconds", "Unix time of the last fully successful cycle.",
)
SECONDS_BEHIND = Gauge(
    "waiqin_poller_seconds_behind",
    "Now minus the start of the last fully committed cycle (how stale the stream may be).",
)
OUTBOX_RESENT = Counter(
    "waiqin_poller_outbox_resent_total",
    "Records sent from the outbox after an interrupted send (crash, failed publish, failover).",
)
STORE_TASKS = Gauge("waiqin_poller_store_tasks", "Tasks held in the snapshot store.")
IS_LEADER = Gauge("waiqin_poller_leader", "1 while this process is the active poller.")
