"""
JSON text as dashd writes it everywhere (device frames, events, responses,
the store): compact, with non-ASCII characters kept as they are.
"""

from __future__ import annotations

import json
from typing import Any, Callable

# Built once: json.dumps with options builds a new encoder on every call.
compact: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
