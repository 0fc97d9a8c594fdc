"""The URL-list engine: reader, plan, fetcher, native and img2dataset engines, shard files, executors."""
