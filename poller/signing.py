"""Waiqin365 request signing: the Beijing timestamp and the md5 digest that travel in the URL."""

from __future__ import annotations

import hashlib
from datetime import datetime

from poller.models import BEIJING

# The timestamp path segment: yyyyMMddHHmmss. The server rejects one more than 10 minutes off.
TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"


def beijing_timestamp(now: datetime) -> str:
    """`now` as yyyyMMddHHmmss in Beijing time (UTC+8), whatever the machine's zone.

    Raises ValueError for a naive datetime: its zone would silently be the machine's, which is
    exactly the mistake (a pod in UTC signing with UTC wall time) this function exists to prevent.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {now.isoformat()}")
    return now.astimezone(BEIJING).strftime(TIMESTAMP_FORMAT)


def digest(body: bytes, appkey: str, timestamp: str) -> str:
    """Lower-case hex md5(body + "|" + appkey + "|" + timestamp) over the exact bytes sent.

    The body is signed as bytes, not re-serialised: any difference in spacing, key order or
    escaping between what is signed and what is sent makes the server refuse the request.
    """
    message = b"|".join((body, appkey.encode("utf-8"), timestamp.encode("ascii")))
    # md5 is the vendor's choice, not ours; usedforsecurity=False keeps FIPS-mode hosts working.
    return hashlib.md5(message, usedforsecurity=False).hexdigest()
