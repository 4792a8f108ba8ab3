"""The board's web server: a JSON API over board.runs/form/jobs/inspect and one static page.

Starlette + uvicorn rather than Gradio, which pulls ~30 packages (and, when this was built,
could not resolve against the pins' pillow 13): the page here is plain HTML/JS shipped in the
package, so it works offline and adds two small dependencies.

Safe by default: the server binds 127.0.0.1; any other address needs `--auth USER:PASS` (HTTP
Basic) because the page starts processes. Requests naming another host than the loopback names
are refused on a local board (DNS rebinding), and POSTs must be JSON from the page's own origin
(a cross-site form cannot start a run). Run names are single path components under --runs;
recipes are only the YAML files of the recipe folders.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tunesmith.board import form, inspect, runs
from tunesmith.board.jobs import Jobs
from tunesmith.errors import UserError

STATIC = Path(__file__).parent / "static"
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
LOG_TAIL = 40


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name) only reaches this machine."""
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """`USER:PASS` of --auth."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError(f"--auth {text!r} is not USER:PASS", "write e.g. --auth alice:s3cret")
    return user, password


class Board:
    """The state behind the API: the runs folder, recipe folders, jobs, one loaded chat model."""

    def __init__(self, root: Path, recipe_dirs: list[Path], workdir: Path) -> None:
        self.root = root
        self.recipe_dirs = recipe_dirs
        self.jobs = Jobs(root, workdir)
        self.chatter: inspect.Chatter | None = None

    def run(self, name: str) -> Path:
        path = runs.run_path(self.root, name)
        if not path.is_dir():
            raise UserError(f"no run {name!r} under {self.root}")
        return path

    def config(self, values: dict[str, str]) -> Any:
        cfg = form.config_from_form(values)
        form.check_confined(cfg, [self.root, *self.recipe_dirs])
        return cfg

    def chat(self, name: str) -> inspect.Chatter:
        run = self.run(name)
        if self.chatter is None or self.chatter.run != run:
            self.chatter = None  # one model in memory at a time
            if not (run / "final").is_dir():
                raise UserError(f"run {name!r} has no final/ model yet", "wait until it finishes")
            self.chatter = inspect.Chatter.load(run)
        return self.chatter


def build_app(
    root: Path,
    recipe_dirs: list[Path],
    workdir: Path | None = None,
    auth: tuple[str, str] | None = None,
    local_only: bool = True,
) -> Starlette:
    """The Starlette app serving the board for runs under `root`."""
    board = Board(root, recipe_dirs, workdir or Path.cwd())

    async def body(request: Request) -> dict[str, Any]:
        data = await request.json()
        if not isinstance(data, dict):
            raise UserError("the request body must be a JSON object")
        return data

    def api(fn: Callable[..., Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                result = await fn(request)
            except UserError as exc:
                return JSONResponse({"error": exc.one_line()}, status_code=400)
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    async def run_list(request: Request) -> Any:
        return {"runs": [r.as_json() for r in runs.list_runs(root)], "root": str(root)}

    async def run_detail(request: Request) -> Any:
        run = board.run(request.path_params["name"])
        log = run / runs.LOG
        tail = (
            log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL:]
            if log.is_file()
            else []
        )
        return {
            **runs.status_of(run).as_json(),
            "metrics": runs.read_metrics(run),
            "log": tail,
        }

    async def diff(request: Request) -> Any:
        names = (await body(request)).get("runs") or []
        configs = {n: runs.read_run_config(board.run(n)) for n in names}
        metrics = {n: runs.read_metrics(board.run(n)) for n in names}
        return {"rows": runs.config_diff(configs), "metrics": metrics}

    async def schema(request: Request) -> Any:
        return {
            **form.schema(),
            "recipes": form.list_recipes(recipe_dirs),
            "devices": form.devices(),
        }

    async def recipe(request: Request) -> Any:
        cfg = form.load_recipe(request.query_params.get("path", ""), recipe_dirs)
        return {"values": form.form_values(cfg)}

    async def run_form(request: Request) -> Any:
        from tunesmith.config import config_from_dict

        run = board.run(request.path_params["name"])
        cfg = config_from_dict(form.recipe_dict(_loaded(run)), str(run / "config.yaml"))
        return {"values": form.form_values(cfg)}

    def _loaded(run: Path) -> Any:
        from tunesmith.config import config_from_dict

        return config_from_dict(runs.read_run_config(run), str(run / "config.yaml"))

    async def validate(request: Request) -> Any:
        board.config((await body(request)).get("values") or {})
        return {"ok": True}

    def plan_sync(data: dict[str, Any]) -> Any:
        cfg = board.config(data.get("values") or {})
        gpus = int(data.get("gpus") or 1)
        device = str(data.get("device") or "cpu")
        rows = form.plan_rows(cfg, device, gpus, bool(data.get("compare")))
        return {"rows": rows, "would_fit": form.would_fit(cfg, device, gpus)}

    async def plan(request: Request) -> Any:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(plan_sync, await body(request))

    async def launch(request: Request) -> Any:
        data = await body(request)
        cfg = board.config(data.get("values") or {})
        run = board.jobs.launch(
            str(data.get("name") or ""), form.recipe_dict(cfg), int(data.get("nproc") or 1)
        )
        return {"ok": True, "run": run.name}

    async def stop(request: Request) -> Any:
        board.jobs.stop(request.path_params["name"])
        return {"ok": True}

    async def resume(request: Request) -> Any:
        data = await body(request)
        board.jobs.resume(request.path_params["name"], int(data.get("nproc") or 1))
        return {"ok": True}

    def preview_sync(data: dict[str, Any]) -> Any:
        cfg = board.config(data.get("values") or {})
        return inspect.preview(cfg, int(data.get("n") or 5))

    async def preview(request: Request) -> Any:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(preview_sync, await body(request))

    async def chat(request: Request) -> Any:
        from starlette.concurrency import run_in_threadpool

        data = await body(request)
        chatter = await run_in_threadpool(board.chat, str(data.get("run") or ""))
        which = "base" if data.get("which") == "base" else "tuned"
        messages = conversation(data)
        tokens = max(1, min(int(data.get("max_new_tokens") or 64), 1024))
        if which == "base":
            header = chatter.base_note
        else:
            header = f"{data.get('run')}/final"
        stream = chatter.stream(messages, which, tokens)
        return StreamingResponse(
            stream, media_type="text/plain; charset=utf-8", headers={"X-Model": header}
        )

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", index),
        Route("/api/runs", api(run_list)),
        Route("/api/runs/{name}", api(run_detail)),
        Route("/api/runs/{name}/form", api(run_form)),
        Route("/api/runs/{name}/stop", api(stop), methods=["POST"]),
        Route("/api/runs/{name}/resume", api(resume), methods=["POST"]),
        Route("/api/diff", api(diff), methods=["POST"]),
        Route("/api/schema", api(schema)),
        Route("/api/recipe", api(recipe)),
        Route("/api/validate", api(validate), methods=["POST"]),
        Route("/api/plan", api(plan), methods=["POST"]),
        Route("/api/launch", api(launch), methods=["POST"]),
        Route("/api/preview", api(preview), methods=["POST"]),
        Route("/api/chat", api(chat), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def guard(request: Request, call_next: Callable) -> Response:
        refusal = _refusal(request, auth, local_only)
        if refusal is not None:
            return refusal
        return await call_next(request)

    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)])


def conversation(data: dict[str, Any]) -> list[dict[str, str]]:
    """The Try tab's conversation: `messages` (each side keeps its own history), or one `text`."""
    if "messages" not in data:
        return [{"role": "user", "content": str(data.get("text") or "")}]
    messages = data["messages"]
    roles = ("system", "user", "assistant")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get("role") in roles and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise UserError(
            "messages must be a list of {role, content}", f"roles are {', '.join(roles)}"
        )
    if not messages or messages[-1]["role"] != "user":
        raise UserError("the conversation must end with a user message")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _refusal(request: Request, auth: tuple[str, str] | None, local_only: bool) -> Response | None:
    """Why a request is refused (a response), or None to serve it."""
    if auth is not None and not _authorized(request.headers.get("authorization", ""), auth):
        return PlainTextResponse(
            "login required",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="tunesmith board"'},
        )
    host = request.headers.get("host", "")
    if local_only and not is_loopback(_hostname(host)):
        return PlainTextResponse("this board only answers to localhost", status_code=403)
    if request.method == "POST":
        if not request.headers.get("content-type", "").startswith("application/json"):
            return PlainTextResponse("POST bodies must be JSON", status_code=415)
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != host:
            return PlainTextResponse("cross-origin requests are refused", status_code=403)
    return None


def _hostname(host: str) -> str:
    """The name part of a Host header (`127.0.0.1:7860`, `[::1]:7860`, `localhost`)."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.split(":")[0]


def _authorized(header: str, auth: tuple[str, str]) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user, auth[0]) & hmac.compare_digest(password, auth[1])


def serve(
    root: Path,
    recipe_dirs: list[Path],
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | None = None,
) -> None:
    """Serve the board until interrupted (runs it launched keep going)."""
    import uvicorn

    credentials = parse_auth(auth)
    if not is_loopback(host) and credentials is None:
        raise UserError(
            f"--host {host} makes the board reachable from other machines, and it starts processes",
            "add --auth USER:PASS, or keep the default --host 127.0.0.1",
        )
    root.mkdir(parents=True, exist_ok=True)
    app = build_app(root, recipe_dirs, Path.cwd(), credentials, local_only=is_loopback(host))
    print(f"tunesmith board: http://{host}:{port}  (runs in {root})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
