"""``python -m appliance``: the same as the ``appliance`` console script (serves by default)."""

import sys

from appliance.cli.main import main

sys.exit(main())
