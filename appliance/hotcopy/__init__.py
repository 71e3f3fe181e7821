"""Hot copies between instances: ``appliance alias`` and ``appliance cp`` (issue 12 §3).

What ReductStore's ``reduct-cli cp`` does, over the public HTTP API only, so the source and the
destination may each be this appliance or a real ReductStore:

- ``aliases``: named instances (URL + token) kept in the user's config folder (mode 0600).
- ``locations``: ``SRC/BUCKET`` and ``DST/BUCKET`` resolved to an alias, a URL or (source
  only) a local data folder or complete backup folder, opened read-only.
- ``filters``: what to copy (time range, label include/exclude, per-entry limit).
- ``remote``: an instance over HTTP: entry-level query + v1 batched reads, v1 batched writes.
- ``local``: a data folder through the engine's read-only (replica) view.
- ``copier``: one task per entry (``--parallel`` at a time), payloads streamed from the
  read answer straight into the write request, 409 answers counted as skipped, resumption
  after a transient failure.
- ``progress``: a rich progress bar on a terminal, plain lines otherwise.
"""
