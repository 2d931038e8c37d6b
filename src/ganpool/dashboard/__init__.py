"""The class's web page. Its packages come with the `dashboard` extra: check them first, so
that a plain install says which extra to add instead of failing on an import."""

from ganpool.extras import require

for _module in ("fastapi", "uvicorn", "jinja2"):  # its connection pool: ganpool.store.pool
    require(_module, "dashboard", "the dashboard")
