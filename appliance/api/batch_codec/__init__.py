"""Sans-I/O codec for the batch protocol headers: v1 (§7, one entry) and v2 (§8, many entries).

Input is a plain mapping of lower-cased header names to values; output is frozen dataclasses
(requests) or ``{name: value}`` dicts / ``(name, value)`` pairs (responses). Nothing here knows
Quart: the HTTP layer moves bodies and turns ``UnprocessableEntity`` into a 422.

v1 record header: ``x-reduct-time-<ts>: <len>,<content-type>[,<k>=<v>]*`` (values containing a
comma are quoted). v2: ``x-reduct-entries`` (percent-encoded names), ``x-reduct-start-ts``, an
optional ``x-reduct-labels`` name dictionary and ``x-reduct-<entry-index>-<delta>:
<len>[,<content-type>[,<label-delta>]]`` where omitted parts are inherited from the previous
record of the same entry and an empty label value deletes the label. Parsing mirrors
ReductStore's ``reduct_base::batch`` byte for byte, quirks included, because clients are
tested against it; error messages are the spec's.

One package, one module per job: ``common`` (the label grammar, names, error texts v1 and v2
share), ``v1`` (parse and encode, one entry), ``v2_parse`` (requests), ``v2_encode`` (read
batches, echoes, errors). The HTTP layer imports the codec from the package.
"""

from __future__ import annotations

from appliance.api.batch_codec.common import (
    DEFAULT_CONTENT_TYPE,
    LabelUpdate,
    RecordLike,
    decode_name,
    encode_name,
    header_pairs,
)
from appliance.api.batch_codec.v1 import (
    V1Record,
    encode_v1_error,
    encode_v1_record_header,
    parse_v1_headers,
    parse_v1_timestamps,
    run_tails,
    v1_lines,
    v1_run_lines,
)
from appliance.api.batch_codec.v2_encode import (
    encode_v2_echo,
    encode_v2_error,
    encode_v2_read_batch,
    run_values,
    v2_body_order,
    v2_one_entry_lines,
    v2_read_batch_headers,
    v2_read_batch_raw,
    v2_run_lines,
)
from appliance.api.batch_codec.v2_parse import (
    V2Record,
    V2Request,
    parse_v2_remove,
    parse_v2_request,
    parse_v2_update,
)

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "LabelUpdate",
    "RecordLike",
    "V1Record",
    "V2Record",
    "V2Request",
    "decode_name",
    "encode_name",
    "encode_v1_error",
    "encode_v1_record_header",
    "run_tails",
    "run_values",
    "v1_lines",
    "v1_run_lines",
    "encode_v2_echo",
    "encode_v2_error",
    "encode_v2_read_batch",
    "parse_v1_headers",
    "parse_v1_timestamps",
    "parse_v2_remove",
    "parse_v2_request",
    "parse_v2_update",
    "header_pairs",
    "v2_body_order",
    "v2_one_entry_lines",
    "v2_read_batch_headers",
    "v2_read_batch_raw",
    "v2_run_lines",
]
