"""SQLAlchemy 2 tables, the engine factory, statements by noun (projects, definitions, run
records, the event archive, workflow nodes, recovery) and Alembic migrations."""
