"""The floor for bench_hooks.py: a bare Flask endpoint that parses the body and returns a static card."""

from __future__ import annotations

import orjson
from flask import Flask, Response, request

app = Flask(__name__)

_CARD = orjson.dumps(
    {
        "cards": [
            {
                "uuid": "00000000-0000-4000-8000-000000000000",
                "summary": "Static card",
                "indicator": "info",
                "source": {"label": "floor"},
            }
        ]
    }
)


@app.post("/cds-services/<service_id>")
def hook(service_id: str) -> Response:
    orjson.loads(request.get_data())
    return Response(_CARD, mimetype="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return Response(b'{"status":"ok"}', mimetype="application/json")
