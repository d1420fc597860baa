"""Every Prometheus metric of the poller, declared once (waiqin_poller_<thing>_<unit>)."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from poller import __version__

# Every counter would also export a `<name>_created` series per label set: twice the series
# for nothing a dashboard or an alert uses.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

# Label values known in advance. Their series are created at 0 on start, because Prometheus
# cannot see the first increment of a series that appears at 1: `increase()` needs two samples.
ENDPOINTS = ("queryTask", "queryTaskType")  # poller.fetch.PATHS; a test keeps them equal
API_OUTCOMES = ("ok", "unavailable", "auth", "error")
CYCLE_OUTCOMES = ("success", "failure")
DEAD_LETTER_KINDS = ("not_object", "no_id", "bad_shape", "bad_time", "bad_number")


class OptionalGauge:
    """A gauge that exports no sample while its value is unknown.

    An unlabelled prometheus_client Gauge always exports a number (0 before the first set),
    and 0 is a lie for a timestamp or a lag nobody measured yet: alerts compare it to time()
    and stay silent. Absence is what PromQL can test for (`unless`, `absent()`).
    """

    def __init__(self, name: str, documentation: str, *,
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self._value: float | None = None
        self._function: Callable[[], float | None] | None = None
        if registry is not None:
            registry.register(self)

    def set(self, value: float) -> None:
        """Export `value` from now on."""
        self._value = float(value)
        self._function = None

    def clear(self) -> None:
        """Export nothing until the next `set`."""
        self._value = None
        self._function = None

    def set_function(self, function: Callable[[], float | None]) -> None:
        """Read the value from `function` at each scrape; None means nothing is exported."""
        self._function = function

    @property
    def value(self) -> float | None:
        """The value a scrape would export now (None: no sample)."""
        return self._function() if self._function is not None else self._value

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        value = self.value
        if value is None:
            return []
        return [GaugeMetricFamily(self.name, self.documentation, value=value)]


BUILD = Info("waiqin_poller_build", "The running release (value 1; the labels say which).")
BUILD.info({"version": __version__, "python": platform.python_version()})

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
API_CONNECTED = Gauge(
    "waiqin_poller_api_connected",
    "1 when the last API request got an HTTP answer, 0 after a connection failure or timeout "
    "(and before the first request).",
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
LAST_EVENT = OptionalGauge(
    "waiqin_poller_last_event_timestamp_seconds",
    "Unix time Kafka last acknowledged records from this process (absent before the first).",
)
BROKER_CONNECTED = Gauge(
    "waiqin_poller_broker_connected",
    "1 when the Kafka brokers acknowledged the last start, publish or ping, 0 after a failure "
    "(and before the first).",
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
LAST_SUCCESS = OptionalGauge(
    "waiqin_poller_last_success_timestamp_seconds",
    "Unix time of the last fully successful cycle of this process while it polls (absent "
    "before the first and on a standby).",
)
ACTIVE_SINCE = OptionalGauge(
    "waiqin_poller_active_since_timestamp_seconds",
    "Unix time since which this process is expected to poll: its start, or when it last took "
    "over from another replica (absent on a standby). Alerts measure from here until the "
    "first successful cycle.",
)
LAG = OptionalGauge(
    "waiqin_poller_lag_seconds",
    "Now minus the start of the last fully committed cycle: how stale the stream may be "
    "(absent while unknown).",
)
FIRST_RUN_ACTIVE = Gauge(
    "waiqin_poller_first_run_active", "1 while the first run (history baseline or replay) is in progress.",
)
FIRST_RUN_PROGRESS = Gauge(
    "waiqin_poller_first_run_progress_ratio",
    "Share of the first run's history read so far, 0 to 1 (1 once it is complete).",
)
OUTBOX_RESENT = Counter(
    "waiqin_poller_outbox_resent_total",
    "Records sent from the outbox after an interrupted send (crash, failed publish, failover).",
)
# --- the first run, the sweep, backfills and the API budget (docs/design.md §3, §3.1) ---------
SWEEP_FOUND = Counter(
    "waiqin_poller_sweep_changes_total",
    "Changes the sweep found that the window had missed, by cause: modify_time_unchanged "
    "(content changed, modify_time did not) or modify_time_before_window.", ["cause"],
)
SOURCE_LATENESS = Histogram(
    "waiqin_poller_source_lateness_seconds",
    "For every change found: when it was seen minus its modify_time.",
    buckets=(60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400,
             30 * 86400),
)
LOOKBACK = Gauge(
    "waiqin_poller_lookback_seconds", "POLLER_LOOKBACK_MINUTES in seconds (alerts compare lateness to it).",
)
SWEEP_PERIOD = Gauge(
    "waiqin_poller_sweep_period_seconds", "POLLER_SWEEP_PERIOD_HOURS in seconds (0: the sweep is off).",
)
SWEEP_PROGRESS = Gauge(
    "waiqin_poller_sweep_progress_ratio", "Share of the history the current sweep pass has read.",
)
STALENESS = Gauge(
    "waiqin_poller_verification_age_seconds",
    "Age of the least recently verified stored task: every task was read again since then "
    "(the staleness bound of changes that do not move modify_time).",
)
SWEEP_PAGES_PER_CYCLE = Gauge(
    "waiqin_poller_sweep_pages_per_cycle", "Sweep pages each cycle reads to finish a pass in its period.",
)
SWEEP_PASSES = Counter("waiqin_poller_sweep_passes_total", "Sweep passes completed.")
SLICES_REREAD = Counter(
    "waiqin_poller_slices_reread_total",
    "Create-date slices read again because a read saw a task twice (pagination drift).", ["kind"],
)
SLICES_SPLIT = Counter(
    "waiqin_poller_slices_split_total", "Create-date slices split because they filled too many pages.",
)
TASKS_VANISHED = Counter(
    "waiqin_poller_tasks_vanished_total", "Tasks confirmed gone from the API (TaskVanished).",
)
VANISH_BREAKER = Counter(
    "waiqin_poller_vanish_breaker_trips_total",
    "Slices where too many stored tasks were missing at once to believe it: nothing announced.",
)
BACKFILLS_DONE = Counter("waiqin_poller_backfills_completed_total", "Backfill requests completed.")
API_REQUESTS_TODAY = Gauge(
    "waiqin_poller_api_requests_today", "API requests made on the current Beijing day (all endpoints).",
)
INTERVAL = Gauge(
    "waiqin_poller_interval_seconds", "Seconds between cycle starts (stretched under a tight budget).",
)
INTERVAL_STRETCHED = Counter(
    "waiqin_poller_interval_stretched_total",
    "Cycles whose next start was postponed because the window alone would exceed the daily budget.",
)
STORE_TASKS = Gauge("waiqin_poller_store_tasks", "Tasks held in the snapshot store.")
IS_LEADER = Gauge("waiqin_poller_leader", "1 while this process is the active poller.")
IS_STANDBY = Gauge(
    "waiqin_poller_standby", "1 while this process waits for another replica to give up the lead.",
)


def _preinitialise() -> None:
    for outcome in CYCLE_OUTCOMES:
        CYCLES.labels(outcome)
    for endpoint in ENDPOINTS:
        API_RETRIES.labels(endpoint)
        API_AUTH_FAILURES.labels(endpoint)
        for api_outcome in API_OUTCOMES:
            API_REQUESTS.labels(endpoint, api_outcome)
    for kind in DEAD_LETTER_KINDS:
        DEAD_LETTERS.labels(kind)


_preinitialise()
