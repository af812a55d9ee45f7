"""JSON log lines with the current request id (a context variable set per HTTP request)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("unetkit_request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOGGER = logging.getLogger("unetkit.serve")


def new_request_id(incoming: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    return incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """One JSON line per record on stderr for unetkit.serve and uvicorn's own messages (idempotent)."""
    for logger in (LOGGER, logging.getLogger("uvicorn.error")):
        logger.setLevel(level.upper())
        logger.propagate = False
        if not any(getattr(h, "_unetkit_json", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
            handler._unetkit_json = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


def log(level: int, message: str, exc_info: bool = False, **fields: object) -> None:
    LOGGER.log(level, message, exc_info=exc_info, extra={"fields": fields, "request_id": request_id_var.get()})
