"""HTTP only: parse the request, call a service, shape the response (ARCHITECTURE §1, §7).

One module per resource, each with a Quart blueprint that ``appliance.app`` registers under
``<RS_API_BASE_PATH>api/v1``: ``instance`` (alive, ready, info, list, me), ``buckets``,
``entries`` (routing of ``/b/{bucket}/{entry...}``), ``records``, ``batch_v1``, ``batch_v2``
(``/io``), ``queries``, ``links``, ``lifecycles``, ``backups``, ``replications``, ``tokens``.
Shared pieces: ``access`` (services, auth), ``params`` (request parsing), ``streaming``,
``ingest`` and ``encoding`` (bodies without whole records in memory, gzip/zstd),
``batch_codec/`` (batch headers, sans-I/O: common, v1, v2_parse, v2_encode),
``record_response`` (one record's response), ``connection`` (the ASGI connection),
``response``. Worker threads: ``appliance.workers``; size thresholds: ``appliance.sizes``.
Errors are raised as ``appliance.errors`` classes and rendered by the app's one handler.
"""
