"""The scale-out store on PostgreSQL: the same tables as the embedded store plus the log's
(`schema.py`, created or migrated by `migrate`), shared by any number of API processes and
workers on any hosts. `store.py` holds the reads and the cluster-wide reset, `writer.py` a
worker's batch transaction, `leases.py` which worker processes which log partitions,
`accounts.py` accounts and keys; `connection.py` turns psycopg's errors into trackhouse's.
The log itself is `trackhouse.log.postgres`, in the same database."""

from trackhouse.store.postgres.accounts import PostgresAccounts
from trackhouse.store.postgres.schema import migrate
from trackhouse.store.postgres.store import PostgresStore

__all__ = ["PostgresAccounts", "PostgresStore", "migrate"]
