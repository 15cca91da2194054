"""SQLAlchemy 2 tables, the engine factory, the store and Alembic migrations."""
