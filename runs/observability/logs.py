"""Process logging: a dictConfig JSON file (RUNS_LOGGING_CONFIG), else stderr as plain text or,
with RUNS_LOG_FORMAT=json, one JSON object per line (runs.observability.json_logs)."""

from __future__ import annotations

import json
import logging
import logging.config

from runs.observability.json_logs import JsonFormatter
from runs.settings import Settings


def configure_logging(settings: Settings) -> None:
    if settings.logging_config is not None:
        logging.config.dictConfig(json.loads(settings.logging_config.read_text()))
        return
    if settings.log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
        logging.captureWarnings(True)  # warnings are lines of the log too, not bare stderr
        return
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
