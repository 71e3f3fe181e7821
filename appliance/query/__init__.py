"""Queries: the ``when`` language and query handles (spec §5).

``parser`` compiles a ``when`` JSON object into a tree of ``nodes`` built from ``operators``,
``aggregation`` (stateful ``$each_n``/``$each_t``/``$limit``/``$gate``) and ``values`` (typing
and comparison), plus ``directives``; ``condition`` is what the read path evaluates per record.
``patterns`` selects the entries of a multi-entry query, ``handle`` is one query (positions,
collecting a read batch), ``registry`` keeps the handles (ids, TTL, REMOVE queries) and
``context`` shapes records (``#ctx_*``, ``#select_labels``). No HTTP here:
``appliance.api.queries``, ``batch_v1`` and ``batch_v2`` call it.
"""
