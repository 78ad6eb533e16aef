"""
Fleet jobs (L{dashd.app.jobs}):

- ``POST /api/v2/jobs``: create one (201 with it; the spec is in
  L{dashd.domain.jobs}); ``GET /api/v2/jobs``: the account's, newest first.
- ``GET /api/v2/jobs/:id``: one, with its progress counts;
  ``DELETE`` deletes one that has ended.
- ``GET /api/v2/jobs/:id/executions?state=&limit=&cursor=``: its devices.
- ``POST /api/v2/jobs/:id/pause``, ``/resume``, ``/cancel``, ``/retry``, ``/approve``
  (a staged rollout's next phase).
"""

from __future__ import annotations

from typing import Any

from dashd.api.base import ApiBase, app, int_arg, json_body, text_arg
from dashd.domain.errors import Invalid


def _cursor(request: Any) -> int | None:
    cursor = text_arg(request, "cursor")
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise Invalid("cursor is not one this API gave", "cursor")
    return int(cursor)


class JobRoutes(ApiBase):
    @app.route("/api/v2/jobs", methods=["POST"])
    async def create_job(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        body = json_body(request)
        if body is None:
            raise Invalid("the request body must be a JSON object: the job")
        job = await self.application.jobs.create(key, body)
        request.setResponseCode(201)
        request.setHeader(b"location", ("/api/v2/jobs/%s" % job["id"]).encode("ascii"))
        return self.json(request, job)

    @app.route("/api/v2/jobs", methods=["GET"])
    async def list_jobs(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        found, following = await self.application.jobs.list(
            key, int_arg(request, "limit", 50), _cursor(request))
        if following is not None:
            request.setHeader(b"X-Next-Cursor", str(following).encode("ascii"))
        return self.json(request, found)

    @app.route("/api/v2/jobs/<job_id>", methods=["GET"])
    async def get_job(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        jobs = self.application.jobs
        return self.json(request, await jobs.view(await jobs.get(key, job_id)))

    @app.route("/api/v2/jobs/<job_id>", methods=["DELETE"])
    async def delete_job(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.application.jobs.delete(key, job_id))

    @app.route("/api/v2/jobs/<job_id>/executions", methods=["GET"])
    async def job_executions(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        state = text_arg(request, "state")
        states = tuple(s.strip() for s in state.split(",")) if state is not None else None
        found, following = await self.application.jobs.executions(
            key, job_id, states, int_arg(request, "limit", 100), _cursor(request))
        if following is not None:
            request.setHeader(b"X-Next-Cursor", str(following).encode("ascii"))
        return self.json(request, found)

    @app.route("/api/v2/jobs/<job_id>/pause", methods=["POST"])
    async def pause_job(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.application.jobs.pause(key, job_id))

    @app.route("/api/v2/jobs/<job_id>/resume", methods=["POST"])
    async def resume_job(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.application.jobs.resume(key, job_id))

    @app.route("/api/v2/jobs/<job_id>/cancel", methods=["POST"])
    async def cancel_job(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        force = text_arg(request, "force")
        if force not in (None, "true", "false"):
            raise Invalid("force must be true or false", "force")
        return self.json(request, await self.application.jobs.cancel(key, job_id,
                                                                     force=force == "true"))

    @app.route("/api/v2/jobs/<job_id>/retry", methods=["POST"])
    async def retry_job(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.application.jobs.retry(key, job_id))

    @app.route("/api/v2/jobs/<job_id>/approve", methods=["POST"])
    async def approve_job(self, request: Any, job_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.application.jobs.approve(key, job_id))
