"""exprsn-timeline, migrated by the guide's steps 1-8: the README's example, complete.

Run it:  python -m exprsn_ipc.examples.migration
or:      exprsn-ipc serve exprsn_ipc.examples.migration:app --service exprsn-timeline
"""

# Step 1: imports
import asyncio
import itertools
import logging
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request

from exprsn_ipc import IPCWorker, MessageMeta, Settings
from exprsn_ipc.web import CAToken, HTTPSServerManager, bypass_all, log_bypass_status
from exprsn_ipc.web.integration import get_ipc

logger = logging.getLogger("exprsn-timeline")
settings = Settings.load()  # the .env of the guide's "Update Environment Variables"


# The service's own data: an in-memory stand-in for its database.
@dataclass
class Post:
    id: int
    user_id: str
    content: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Database:
    def __init__(self) -> None:
        self.posts: dict[int, Post] = {}
        self.user_cache: dict[str, Any] = {}
        self._ids = itertools.count(1)

    def create_post(self, user_id: str, content: str) -> Post:
        post = Post(next(self._ids), user_id, content)
        self.posts[post.id] = post
        return post

    def close(self) -> None:
        logger.info("database closed")


db = Database()


# Step 2: the IPC worker (exact service name), bypass status, ready/error handlers
log_bypass_status(settings)
ipc = IPCWorker("exprsn-timeline", namespace="ipc", settings=settings)
ipc.on("ready", lambda: logger.info("IPC Worker ready for inter-service communication"))
ipc.on("error", lambda error: logger.error("IPC Worker error: %s", error))

# Step 4: request.state.ipc (req.ipc): the worker starts and stops with the app
app = FastAPI(lifespan=ipc.lifespan)

# Step 3: bypass BEFORE auth. Auth runs as a dependency of each route, after all middleware.
app.add_middleware(bypass_all, settings=settings)


# Step 6: service-specific handlers
@ipc.on("post:created")
async def on_post_created(data: dict[str, Any], meta: MessageMeta) -> None:
    logger.debug("Post created event received postId=%s source=%s", data["id"], meta.source)


@ipc.on("user:updated")
async def on_user_updated(data: dict[str, Any], meta: MessageMeta) -> None:
    db.user_cache[str(data["userId"])] = data["updates"]


# Step 7: emit in routes (best-effort: never fail the request)
@app.post("/posts")
async def create_post(request: Request, ca_token: CAToken, ipc: IPCWorker = Depends(get_ipc)) -> dict[str, Any]:
    post = db.create_post(user_id=str(request.state.user["id"]), content=(await request.json())["content"])
    try:
        await ipc.emit("post:created", post.as_dict(), target="broadcast")
    except Exception:
        logger.exception("Failed to emit post:created event")
    return {"success": True, "data": post.as_dict()}


# The guide's bypass check ("Test Development Bypass") posts here.
@app.post("/api/resource")
async def create_resource(request: Request, ca_token: CAToken) -> dict[str, Any]:
    return {"success": True, "data": await request.json(), "user": request.state.user["id"]}


# Step 5: HTTPS through the server manager (HTTP on port-1 redirects to HTTPS); it adds /health
# Step 8: graceful shutdown on SIGTERM/SIGINT: in-flight requests finish, IPC disconnects, then your hooks run
async def main() -> None:
    port = 3004
    manager = HTTPSServerManager(
        "exprsn-timeline",
        port,
        https_port=port,
        http_port=port - 1,
        enable_http=True,
        redirect_http=True,
        settings=settings,
    )
    manager.on_shutdown(db.close)
    await manager.serve_forever(app)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
