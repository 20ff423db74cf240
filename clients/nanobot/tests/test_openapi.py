"""The OpenAPI document a running Hive serves is a valid OpenAPI document that client
generators can use: it validates, and every operation has its own operationId."""

from __future__ import annotations

import httpx
from openapi_spec_validator import validate


def test_the_served_openapi_document_validates(hive):
    url, _key = hive
    document = httpx.get(f"{url}/openapi.json", timeout=10).json()
    validate(document)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()
           if isinstance(op, dict) and "operationId" in op]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {"listAgents", "getAgent", "putAgent", "deleteAgent", "execInAgent", "listSecrets"} <= set(ids)
