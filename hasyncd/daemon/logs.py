"""Log lines as key=value (logfmt), with journald priorities when stderr is the journal.

One line per record: ``time=... level=warning logger=hasyncd.roles msg="PROMOTED ..."``.
Under systemd (stderr connected to the journal, as ``$JOURNAL_STREAM`` says)
the time is left to the journal and each line starts with its syslog
priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug, so that
``journalctl -p warning`` shows PROMOTED, FENCED and SUSPENDED lines.

``[log] level`` applies to hasyncd's own loggers; libraries (aiohttp,
asyncio) log warnings and errors only, so ``debug`` shows hasyncd's link,
replication and election decisions, not the libraries' chatter.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
CRITICAL_PRIORITY = 2


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\t", "\\t") + '"'


class LogfmtFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        fields = [
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            "msg=" + _quote(msg),
        ]
        if self.journal:
            prio = PRIORITY.get(record.levelno, CRITICAL_PRIORITY)
            return f"<{prio}>" + " ".join(fields)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        return f"time={stamp}.{int(record.msecs):03d} " + " ".join(fields)


def stderr_is_journal(stream: TextIO = sys.stderr) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup(level: str) -> None:
    """Configure the root handler once; ``set_level`` changes the level later (reload)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger("hasyncd").setLevel(level.upper())
