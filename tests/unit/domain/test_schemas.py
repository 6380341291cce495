from pathlib import Path

from patrol.devtools.schemas import render_schemas

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    for name, text in render_schemas().items():
        committed = SCHEMAS / name
        assert committed.exists(), f"{committed} is missing: run `make schemas`"
        assert committed.read_text("utf-8") == text, f"{name} is stale: run `make schemas`"
