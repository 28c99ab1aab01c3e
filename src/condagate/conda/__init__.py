"""The conda domain: package reading, records, repodata encoding, shards. No web, no database."""
