"""Jobs: io + models on Ray, writing keyed Parquet.

Contract: every job that writes parts is an instance of the one skeleton in job.py (manifest and
lock, resume by key, actor pool, progress, summary) and takes one options object built from the
groups in options.py; a job supplies only its planning, its unit's work, its schema and key
(embed.py, track.py, variants.py). runtime.py holds the Ray connection and the part writing,
manifest.py what makes a folder trustworthy, schema.py every output's columns and metadata,
preflight.py the checks that run before any model. train.py/deepspeed_engine.py train with
DeepSpeed; query.py reads outputs with DuckDB; submit.py sends commands to a Ray cluster.
Measurements of these jobs live in benchmarks/results/*.json, not here.
"""
