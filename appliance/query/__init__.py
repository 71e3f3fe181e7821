"""Queries: the ``when`` language and query handles (spec §5).

``parser`` compiles a ``when`` JSON object into a tree of ``nodes`` built from ``operators``,
``aggregation`` (stateful ``$each_n``/``$each_t``/``$limit``/``$gate``) and ``values`` (typing
and comparison), plus ``directives``; ``condition`` is what the read path evaluates per record.
``patterns`` selects the entries of a multi-entry query and ``registry`` keeps the query
handles (TTL, batching). No HTTP here: ``appliance.api.queries`` and ``io`` call it.
"""
