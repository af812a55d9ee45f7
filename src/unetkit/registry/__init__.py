"""The model registry: trained versions, content-addressed artifacts, gated promotion, rollback.

`Registry.open(location)` (registry.py) over a SQLAlchemy database (db.py, SQLite by default) and a
content-addressed blob store (blobs.py); the promotion gate is pure logic (gate.py), and so is the
comparison of two versions (compare.py). SQLite needs nothing beyond the base install;
PostgreSQL needs psycopg: pip install 'unetkit[postgres]'.
"""
