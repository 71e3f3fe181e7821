"""The web console: static HTML, CSS and JavaScript served at ``{RS_API_BASE_PATH}ui/``."""
