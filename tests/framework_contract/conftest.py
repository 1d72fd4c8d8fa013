"""Framework contract tests run offline: CrewAI must not phone home, prompt, or write to ~."""

from __future__ import annotations

import os
import tempfile

os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["CREWAI_TESTING"] = "true"
os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="m99-crewai-"))
