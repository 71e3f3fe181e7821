"""The ceiling for the API benchmark: a Quart app on Hypercorn whose handlers do nothing.

It answers like a ReductStore just enough for reduct-py (``x-reduct-api`` header, a bucket info
body) so the benchmark drives it with the very same client code. It reads and drops request
bodies. It runs with the appliance's server settings (Hypercorn config, event loop, socket read
size, ``tune_malloc``, the one-pass HTTP/1 headers and chunk reader of ``appliance.http1``),
so a setting that helps both lifts the ceiling too; ``APPLIANCE_HTTP_PARSER=h11`` gives the
stock Quart+Hypercorn ceiling (``bench_api.py --ceiling-parser h11`` sets it for this process
only).
Usage: ``python tests/bench/empty_app.py PORT``.
"""

from __future__ import annotations

import sys

from hypercorn.asyncio import serve
from quart import Quart, request

from appliance.server import hypercorn_config, install_http1, run, tune_malloc
from appliance.settings import Settings

app = Quart(__name__)
app.config["MAX_CONTENT_LENGTH"] = None
HEADERS = {"x-reduct-api": "1.21"}
V2_ECHO = ("x-reduct-entries", "x-reduct-start-ts")
BUCKET = (
    '{"info":{"name":"b","entry_count":0,"size":0,"oldest_record":0,"latest_record":0},'
    '"settings":{"quota_type":"NONE","quota_size":0,"max_block_size":64000000,'
    '"max_block_records":1024},"entries":[]}'
)


@app.route("/<path:rest>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
async def anything(rest: str) -> tuple[str, int, dict[str, str]]:
    """Drain the body and answer 200 (GET: a minimal bucket info; a v2 batch write: its
    ``x-reduct-entries`` and ``x-reduct-start-ts`` echoed, which reduct-py requires)."""
    async for _ in request.body:
        pass
    if request.method == "GET":
        return BUCKET, 200, {**HEADERS, "content-type": "application/json"}
    echo = {k: request.headers[k] for k in V2_ECHO if k in request.headers}
    return "", 200, {**HEADERS, **echo} if echo else HEADERS


if __name__ == "__main__":
    settings = Settings(host="127.0.0.1", port=int(sys.argv[1]))
    tune_malloc()  # the appliance's server settings, for a fair ceiling
    install_http1()
    run(serve(app, hypercorn_config(settings)))  # type: ignore[arg-type]
