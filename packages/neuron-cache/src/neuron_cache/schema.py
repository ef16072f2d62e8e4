"""JSON Schema for `neuron_config.json`, generated from the dataclasses in `config.py`.

The checked-in copy (`neuron_config.schema.json`) is kept equal to `generate()` by a test;
regenerate it with `python -m neuron_cache.schema`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neuron_cache.config import SCHEMA_VERSION, NeuronConfig
from neuron_cache.typed import json_schema_of

SCHEMA_FILE = Path(__file__).with_name("neuron_config.schema.json")


def generate() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    json_schema_of(NeuronConfig, defs)
    root = defs.pop("NeuronConfig")
    # Cross-field rules (bucket <= max_context_length, ...) are not expressible here; the
    # reader enforces them. `tp_degree` is accepted on read as an alias.
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://neuron-cache/neuron_config.schema.v{SCHEMA_VERSION}.json",
        "title": "neuron_config.json",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    return json.dumps(generate(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(render())
    print(f"wrote {SCHEMA_FILE}")
