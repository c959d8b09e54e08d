"""Structured logs: one JSON object per line on stderr, naming network, node and lease."""

import json
import logging
import sys
import time

_FIELDS = ("network", "node", "lease", "peer", "error", "policyGeneration")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "msg": record.getMessage()}
        for field in _FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = str(value)
        if record.exc_info:  # a bug report needs the stack, on the same line as its message
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("weftd")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger
