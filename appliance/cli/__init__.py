"""The ``appliance`` command: ``main`` parses arguments and dispatches to one module per
subcommand (``serve``, ``check``, ``provision``), each thin over library code. Only this package
and ``appliance.server`` read ``os.environ`` or install signal handlers (ARCHITECTURE §1)."""
