"""The provisioning API (`silo serve`): the seeds' town and silo operations on demand, over the Automation API.

Layout (FastAPI's, one router per resource, auth as dependencies):
  settings.py      ServiceSettings: where the registry, the state and the stacks are, what towns get
  db.py            the registry connection pool and the service's tables (migrations/0006)
  auth.py          tokens (stored hashed, compared in constant time), roles, the route x role matrix
  stacks.py        the Pulumi stacks the service runs: one `town` stack per town, the silos' own stacks
  jobs.py          the durable queue (procrastinate on the registry PostgreSQL): one job per operation,
                   one lock per stack, resumed after a crash
  operations.py    operation rows: queued -> running -> succeeded | failed (resource + reason)
  routers/         towns, silos, operations, heartbeat
  app.py           create_app(): the ASGI app, its worker and its lifespan
"""
