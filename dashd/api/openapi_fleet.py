"""
The OpenAPI description of the firmware library (L{dashd.api.library}) and
fleet jobs (L{dashd.api.jobs}), added to L{dashd.api.openapi.document}'s.
"""

from __future__ import annotations

from typing import Any

from dashd.config import Config

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": "#/components/schemas/%s" % name}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def extend(doc: dict[str, Any], config: Config) -> dict[str, Any]:
    from dashd.api.openapi import ERRORS

    def errors(*codes: str) -> dict[str, Any]:
        return {c: ERRORS[c] for c in ("401",) + codes}

    binary = {"type": "string", "format": "binary"}
    firmware_id = {"name": "firmware_id", "in": "path", "required": True,
                   "schema": {"type": "string", "minLength": 1}}
    paths = doc["paths"]
    paths["/firmware"] = {
        "get": {
            "operationId": "listFirmware",
            "summary": "The firmware library: the account's images, newest first",
            "responses": dict({"200": _ok("images", {"type": "array",
                                                     "items": _ref("FirmwareImage")})},
                              **errors("403")),
        },
        "post": {
            "operationId": "addFirmware",
            "summary": "Add an image to the library: a Mongoose OS .zip or a .bin, as "
                       "multipart (file) or as the raw body, checked as a device's upload",
            "parameters": [{"name": "filename", "in": "query", "required": False,
                            "description": "the raw body's file name (.zip or .bin)",
                            "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"], "properties": {"file": binary}}},
                "application/zip": {"schema": binary},
                "application/octet-stream": {"schema": binary},
            }},
            "responses": dict({"201": dict(_ok("the image", _ref("FirmwareImage")), headers={
                "Location": {"schema": {"type": "string"}}})},
                **errors("400", "403", "413", "415", "429")),
        },
    }
    paths["/firmware/images/{firmware_id}"] = {
        "parameters": [firmware_id],
        "get": {
            "operationId": "getFirmware",
            "summary": "An image of the library",
            "responses": dict({"200": _ok("the image", _ref("FirmwareImage"))},
                              **errors("403", "404")),
        },
        "delete": {
            "operationId": "deleteFirmware",
            "summary": "Delete an image (409 while a job that has not ended uses it)",
            "responses": dict({"200": _ok("the image deleted", _ref("FirmwareImage"))},
                              **errors("403", "404", "409")),
        },
    }
    paths["/firmware/images/{firmware_id}/file"] = {
        "parameters": [firmware_id],
        "get": {
            "operationId": "downloadFirmwareImage",
            "summary": "The image's file (its SHA-256 in X-Content-SHA256)",
            "responses": dict({"200": {"description": "the file", "content": {
                "application/zip": {"schema": binary},
                "application/octet-stream": {"schema": binary}}}},
                **errors("403", "404")),
        },
    }
    ota = paths["/devices/{device_id}/ota"]["post"]
    ota["parameters"] = list(ota["parameters"]) + [{
        "name": "firmware", "in": "query", "required": False,
        "description": "send this image of the library (POST /firmware) instead of a file "
                       "in the body", "schema": {"type": "string"}}]
    ota["requestBody"] = dict(ota["requestBody"], required=False)
    ota["summary"] += "; or an image of the library (?firmware=ID, no body)"

    schemas = doc["components"]["schemas"]
    schemas["FirmwareImage"] = {
        "type": "object",
        "required": ["id", "name", "kind", "size", "sha256", "created", "account_id",
                     "key_id"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string", "description": "the file's name"},
            "kind": {"enum": ["zip", "bin"]},
            "size": {"type": "integer"},
            "sha256": {"type": "string"},
            "created": {"type": "number"},
            "account_id": {"type": "string"},
            "key_id": {"type": "string", "description": "the key that added it"},
            "manifest": {"type": "object", "description": "a zip's manifest.json"},
        },
    }
    return doc
