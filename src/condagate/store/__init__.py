"""Where things live: blobs (content-addressed) and metadata (SQLAlchemy); the only place with SQL."""
