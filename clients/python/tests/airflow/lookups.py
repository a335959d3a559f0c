"""Run by tests/test_airflow.py with the Airflow venv's python: reads
through Airflow's own API, as a task or hook would, once per line on
stdin, and prints what it read as one JSON line ("lookup: {...}"). The process stays up
across the test's rotation, so the second read shows that no restart is
needed.

Airflow finds the backend through its configuration only
(AIRFLOW__SECRETS__BACKEND, AIRFLOW__SECRETS__BACKEND_KWARGS).
"""

from __future__ import annotations

import json
import sys

from airflow.configuration import ensure_secrets_loaded
from airflow.models.connection import Connection
from airflow.models.variable import Variable


def read() -> dict[str, object]:
    db = Connection.get_connection_from_secrets("etl_db")  # stored in the URI form
    api = Connection.get_connection_from_secrets("billing_api")  # stored in the JSON form
    return {
        "backends": [type(b).__name__ for b in ensure_secrets_loaded()],
        "etl_db": [db.conn_type, db.host, db.port, db.schema, db.login, db.password],
        "billing_api": [api.conn_type, api.host, api.password, api.extra_dejson],
        "api_token": Variable.get("api_token"),
        "settings": Variable.get("settings", deserialize_json=True),
    }


for _ in sys.stdin:
    # Airflow logs to stdout too: the test reads the lines with this prefix.
    print("lookup: " + json.dumps(read()), flush=True)
