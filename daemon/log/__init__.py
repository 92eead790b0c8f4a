"""The write-ahead log: the durable queue between ingest and the trainer."""
