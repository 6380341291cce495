"""JSON Schemas of the contract's messages, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from patrol.domain.models import (
    DeadLetter,
    Detection,
    EnforcementTask,
    SmsRecord,
    TaskFeedback,
    TaskStatus,
)

# Inputs are described as they are validated; outputs as they are written.
SCHEMA_MODELS: tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...] = (
    (Detection, "validation"),
    (EnforcementTask, "serialization"),
    (SmsRecord, "serialization"),
    (DeadLetter, "serialization"),
    (TaskFeedback, "validation"),
    (TaskStatus, "serialization"),
)


def render_schemas() -> dict[str, str]:
    """File name → schema text, exactly as `patrol schemas` writes it."""
    rendered: dict[str, str] = {}
    for model, mode in SCHEMA_MODELS:
        schema: dict[str, Any] = model.model_json_schema(mode=mode)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://patrol.local/schemas/{model.__name__}.schema.json"
        text = json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        rendered[f"{model.__name__}.schema.json"] = text
    return rendered


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
