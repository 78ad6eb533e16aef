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

    _jobs(doc, config, errors)
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


def _jobs(doc: dict[str, Any], config: Config, errors: Any) -> None:
    from dashd.app.jobs import MAX_LIST
    from dashd.domain import jobs as j

    job_id = {"name": "job_id", "in": "path", "required": True,
              "schema": {"type": "string", "minLength": 1}}
    number = {"type": "number"}
    seconds = {"type": "number", "exclusiveMinimum": 0}
    paths = doc["paths"]
    rule = {"type": "object", "additionalProperties": False, "required": ["percent"],
            "properties": {"on": {"enum": list(j.ABORT_ON)},
                           "percent": {"type": "number", "minimum": 0, "maximum": 100},
                           "min_finished": {"type": "integer", "minimum": 1}}}
    spec_properties: dict[str, Any] = {
        "name": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"\S"},
        "target": {
            "description": "a device query (where; continuous: devices that match later "
                           "join while the job runs) or a list of device IDs",
            "oneOf": [
                {"type": "object", "additionalProperties": False, "required": ["where"],
                 "properties": {"where": {"type": "string"},
                                "continuous": {"type": "boolean"}}},
                {"type": "object", "additionalProperties": False, "required": ["devices"],
                 "properties": {"devices": {"type": "array", "minItems": 1,
                                            "maxItems": j.MAX_DEVICE_LIST,
                                            "items": {"type": "string", "minLength": 1,
                                                      "maxLength": 32}},
                                "continuous": {"const": False}}},
            ]},
        "action": {"oneOf": [
            {"type": "object", "additionalProperties": False, "required": ["type", "method"],
             "properties": {"type": {"const": "rpc"},
                            "method": {"type": "string", "minLength": 1,
                                       "maxLength": j.MAX_METHOD_LENGTH},
                            "params": {}}},
            {"type": "object", "additionalProperties": False, "required": ["type"],
             "properties": {"type": {"const": "shadow"}, "desired": {"type": "object"},
                            "tags": {"type": "object"}}},
            {"type": "object", "additionalProperties": False, "required": ["type", "firmware"],
             "properties": {"type": {"const": "firmware"},
                            "firmware": {"type": "string", "minLength": 1,
                                         "description": "an image of the library"},
                            "mode": {"enum": list(j.MODES)},
                            "auto_commit": {"type": "boolean",
                                            "description": "default true: a device succeeds "
                                                           "once committed (false: once back "
                                                           "with the new firmware)"},
                            "commit_timeout": {"type": "integer", "minimum": 0,
                                               "maximum": 30 * 86400},
                            "sha256": {"type": "string", "readOnly": True}}},
        ]},
        "phases": {
            "type": "array", "minItems": 1, "maxItems": j.MAX_PHASES,
            "description": "a staged rollout: each phase's cumulative size (percent of the "
                           "devices, or a count), the share that must succeed to start the "
                           "next (after wait seconds, and an approval if asked), the share "
                           "failed or timed out that pauses the job",
            "items": {"type": "object", "additionalProperties": False, "properties": {
                "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "count": {"type": "integer", "minimum": 1},
                "success_threshold": {"type": "number", "minimum": 0, "maximum": 100},
                "error_threshold": {"type": "number", "minimum": 0, "maximum": 100},
                "wait": {"type": "number", "minimum": 0, "maximum": 30 * 86400},
                "approval": {"type": "boolean"}}}},
        "rate": {"oneOf": [
            {"type": "object", "additionalProperties": False, "required": ["per_minute"],
             "properties": {"per_minute": {"type": "number", "minimum": 1,
                                           "maximum": 1e6}}},
            {"type": "object", "additionalProperties": False,
             "required": ["base_per_minute", "increment_factor", "after_succeeded",
                          "max_per_minute"],
             "properties": {"base_per_minute": {"type": "number", "minimum": 1,
                                                "maximum": 1e6},
                            "increment_factor": {"type": "number", "minimum": 1.1,
                                                 "maximum": 5},
                            "after_succeeded": {"type": "integer", "minimum": 1},
                            "max_per_minute": {"type": "number", "minimum": 1,
                                               "maximum": 1e6}}},
        ]},
        "concurrency": {"type": "integer", "minimum": 1, "maximum": j.MAX_CONCURRENCY,
                        "description": "executions out at once (default %d)"
                                       % j.DEFAULT_CONCURRENCY},
        "timeouts": {"type": "object", "additionalProperties": False, "properties": {
            "queued": dict(seconds, maximum=config["calls.max_expires_in"],
                           description="seconds a device may take to be online and take "
                                       "its call (then timed_out, never sent)"),
            "running": dict(seconds, maximum=config["rpc.max_timeout"],
                            description="seconds a device has to answer once it has the "
                                        "call")}},
        "retries": {"type": "integer", "minimum": 0, "maximum": config["calls.max_retries"],
                    "description": "new attempts for a device that failed or timed out"},
        "abort": {"type": "array", "maxItems": j.MAX_RULES, "items": rule},
        "start_at": number,
        "end_at": number,
    }
    job_properties = dict(spec_properties, **{
        "id": {"type": "string"}, "state": {"enum": list(j.JOB_STATES)},
        "account_id": {"type": "string"}, "key_id": {"type": "string"},
        "created": number, "started": {"type": ["number", "null"]},
        "finished": {"type": ["number", "null"]}, "updated": number,
        "progress": {"type": "object", "required": list(j.EXECUTION_STATES) + ["total"],
                     "properties": {s: {"type": "integer"}
                                    for s in list(j.EXECUTION_STATES) + ["total"]}},
        "reason": {"type": "object", "description": "why it ended (aborted: the rule, its "
                                                    "figures and a message)"},
        "retried": {"type": "integer", "description": "POST /retry: executions queued again"},
        "stage": {"type": "object", "description": "a staged rollout: the phase it sends to "
                                                   "(from 0), since when, awaiting_approval"},
    })
    job = {"type": "object", "required": ["id", "name", "state", "target", "action",
                                          "progress", "created"],
           "properties": job_properties}
    execution = {"type": "object",
                 "required": ["device_id", "seq", "state", "attempts", "times"],
                 "properties": {"device_id": {"type": "string"}, "seq": {"type": "integer"},
                                "state": {"enum": list(j.EXECUTION_STATES)},
                                "reason": {"type": "string",
                                           "description": "why it was skipped"},
                                "attempts": {"type": "integer"},
                                "call_id": {"type": ["string", "null"],
                                            "description": "the queued call of its last "
                                                           "attempt (an RPC job)"},
                                "dispatched": {"type": "boolean"},
                                "times": {"type": "object"}, "updated": number,
                                "result": {}, "error": {"type": "object"}}}
    doc["components"]["schemas"].update(Job=job, JobExecution=execution)
    page = {"X-Next-Cursor": {"schema": {"type": "string"},
                              "description": "where the next page starts; absent on the last"}}
    limit = {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST}}
    cursor = {"name": "cursor", "in": "query", "required": False,
              "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    paths["/jobs"] = {
        "get": {
            "operationId": "listJobs",
            "summary": "The account's jobs, newest first (a restricted key: its own)",
            "parameters": [limit, cursor],
            "responses": dict({"200": dict(_ok("jobs", {"type": "array", "items": _ref("Job")}),
                                           headers=page)}, **errors("400")),
        },
        "post": {
            "operationId": "createJob",
            "summary": "Create a job: one action (an RPC call, a shadow change) on the "
                       "devices of a query or a list; checked whole before anything is sent",
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "target", "action"], "properties": spec_properties}}}},
            "responses": dict({"201": dict(_ok("the job", _ref("Job")), headers={
                "Location": {"schema": {"type": "string"}}})}, **errors("400", "403", "413")),
        },
    }
    paths["/jobs/{job_id}"] = {
        "parameters": [job_id],
        "get": {"operationId": "getJob", "summary": "A job and its progress",
                "responses": dict({"200": _ok("the job", _ref("Job"))}, **errors("404"))},
        "delete": {"operationId": "deleteJob",
                   "summary": "Delete a job that has ended (409 otherwise)",
                   "responses": dict({"200": _ok("the job deleted", _ref("Job"))},
                                     **errors("403", "404", "409"))},
    }
    paths["/jobs/{job_id}/executions"] = {
        "parameters": [job_id],
        "get": {
            "operationId": "listJobExecutions",
            "summary": "The job's devices and how each went, in order",
            "parameters": [
                {"name": "state", "in": "query", "required": False,
                 "description": "comma-separated states", "schema": {"type": "string"}},
                limit, cursor],
            "responses": dict({"200": dict(_ok("executions", {
                "type": "array", "items": _ref("JobExecution")}), headers=page)},
                **errors("400", "404")),
        },
    }
    for verb, summary in (
            ("pause", "Stop sending (what was sent goes on and is recorded)"),
            ("resume", "Send again after a pause"),
            ("cancel", "End the job: executions not sent are cancelled (their queued calls "
                       "too); those in progress were sent and go on, their results "
                       "recorded"),
            ("retry", "Queue the failed and timed-out executions again"),
            ("approve", "Start a staged rollout's next phase, which waits for an approval")):
        paths["/jobs/{job_id}/%s" % verb] = {
            "parameters": [job_id],
            "post": {"operationId": "%sJob" % verb, "summary": summary,
                     "responses": dict({"200": _ok("the job", _ref("Job"))},
                                       **errors("403", "404", "409"))},
        }
    paths["/jobs/{job_id}/cancel"]["post"].update(
        description=(
            "Without force: executions not sent are cancelled (their queued calls too); "
            "those in progress go on and their results are recorded. With force=true "
            "(also on a job that has ended with executions in progress): those in progress "
            "are cancelled too, with a reason, and what their devices report for them is "
            "not recorded on the job. Per action: rpc: a call not sent yet is cancelled; "
            "one the device has is not recalled (its answer stays on the call, GET "
            "/calls/:id); shadow: the change is applied at once, nothing to stop; firmware: "
            "a push transfer under way is stopped (no more chunks, never OTA.End, so the "
            "device keeps its firmware), a pull's download link is revoked (a download "
            "begun may finish), an update past its transfer (rebooting, uncommitted) "
            "goes on outside the job."),
        parameters=[{"name": "force", "in": "query", "required": False,
                     "description": "also cancel the executions in progress",
                     "schema": {"enum": ["true", "false"]}}])
    paths["/jobs/{job_id}/cancel"]["post"]["responses"].update(errors("400"))
