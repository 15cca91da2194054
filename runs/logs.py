"""Process logging: a dictConfig JSON file (RUNS_LOGGING_CONFIG) or a plain stderr format."""

from __future__ import annotations

import json
import logging
import logging.config

from runs.settings import Settings


def configure_logging(settings: Settings) -> None:
    if settings.logging_config is not None:
        logging.config.dictConfig(json.loads(settings.logging_config.read_text()))
        return
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
