"""Apache Airflow secrets backend: connections and variables from keyward.

Configure it in ``airflow.cfg`` (or the matching ``AIRFLOW__SECRETS__*``
variables)::

    [secrets]
    backend = keyward.contrib.airflow.KeywardSecretsBackend
    backend_kwargs = {"environment": "prod", "connections_prefix": "airflow-conn-",
                      "variables_prefix": "airflow-var-"}

Then ``Connection.get_connection_from_secrets("my_db")`` (and every hook)
reads the key ``prod/airflow-conn-my_db``, whose secret is the connection
in Airflow's URI form (``postgres://user:pass@host:5432/db``) or JSON form
(``{"conn_type": "postgres", "host": ...}``), and ``Variable.get("api_token")``
reads ``prod/airflow-var-api_token``. Airflow tries this backend first,
then its environment variables and metastore.

Each lookup is a ``GetKey`` on the agent's socket (a fraction of a
millisecond), so a rotation (``keyward stage`` + ``promote``) is seen by
the next lookup, with no restart and no cache to expire; the primary is
what is returned. A key that does not exist, or a conn_id or variable key
that cannot be a key name (names are ``[a-z0-9][a-z0-9._-]*``), is "not
here" (None): Airflow goes on to its next backend. Other errors (agent
down, access denied, untrusted socket) are logged as warnings (never with
a secret) and raised; Airflow goes on to its next backend too.

Tested with Airflow 3.3.2 (tests/airflow/). It implements only what
``BaseSecretsBackend`` has had through Airflow 2 and 3 (``get_conn_value``,
``get_variable``, ``get_connection`` with ``deserialize_connection``), so
other versions should work, untested. ``team_name`` (Airflow 3.2's
multi-team lookups) is accepted and not used: one backend serves one
environment.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow.secrets import BaseSecretsBackend

from ..client import Client
from ..errors import InvalidKey, KeyNotFound, KeywardError

__all__ = ["KeywardSecretsBackend"]

log = logging.getLogger(__name__)


class KeywardSecretsBackend(BaseSecretsBackend):  # type: ignore[misc]  # Airflow ships no types
    """Reads Airflow connections and variables from keyward keys.

    Keyword arguments (Airflow's ``[secrets] backend_kwargs``, a JSON
    object):

    - ``socket``: the agent's service socket (default ``$KEYWARD_SOCKET``,
      else ``/run/keyward/keys.sock``);
    - ``environment``: the keys' environment (default ``"prod"``);
    - ``connections_prefix`` (default ``"airflow-conn-"``) and
      ``variables_prefix`` (default ``"airflow-var-"``): a connection
      ``CONN_ID`` is the key ``ENVIRONMENT/{connections_prefix}CONN_ID``, a
      variable ``KEY`` is ``ENVIRONMENT/{variables_prefix}KEY``; ``null``
      (None) turns that kind of lookup off;
    - ``agent_uid``: the uid keywardd runs as, when that is neither root
      nor Airflow's user (as ``$KEYWARD_AGENT_UID``);
    - ``timeout``: seconds per lookup (default 10).
    """

    def __init__(
        self,
        socket: str | None = None,
        environment: str = "prod",
        connections_prefix: str | None = "airflow-conn-",
        variables_prefix: str | None = "airflow-var-",
        agent_uid: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        # No **kwargs: a misspelt backend_kwargs entry fails at start-up
        # (TypeError naming it) instead of being ignored.
        super().__init__()
        self.socket = socket
        self.environment = environment
        self.connections_prefix = connections_prefix
        self.variables_prefix = variables_prefix
        self._agent_uid = agent_uid
        self._timeout = float(timeout)
        self._client: Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        """The keyward client, made at the first lookup (Airflow may build
        the backend in processes that never use it)."""
        with self._lock:
            if self._client is None:
                self._client = Client(self.socket, agent_uid=self._agent_uid, timeout=self._timeout)
            return self._client

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        """The connection ``conn_id`` as stored: Airflow's URI or JSON form."""
        return self._lookup(self.connections_prefix, conn_id)

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """The connection ``conn_id`` as Airflow's ``Connection``, or None."""
        value = self.get_conn_value(conn_id)
        if not value:
            return None
        return self.deserialize_connection(conn_id=conn_id, value=value)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        """The variable ``key``'s value."""
        return self._lookup(self.variables_prefix, key)

    def key_name(self, prefix: str, name: str) -> str:
        """The keyward key (``ENV/NAME``) that holds ``name``."""
        return f"{self.environment}/{prefix}{name}"

    def _lookup(self, prefix: str | None, name: str) -> str | None:
        if prefix is None:
            return None
        key = self.key_name(prefix, name)
        try:
            return self.client.get(key).primary.text
        except KeyNotFound:
            return None
        except InvalidKey as e:
            log.debug("keyward: %r cannot be a key name (%s); not looked up", key, e)
            return None
        except KeywardError as e:
            # Airflow logs a backend's error at debug level only, then
            # reports the connection as undefined: say what really happened.
            log.warning("keyward: cannot read %s for Airflow: %s", key, e)
            raise

    def __repr__(self) -> str:
        return (
            f"KeywardSecretsBackend(socket={self.socket!r}, environment={self.environment!r}, "
            f"connections_prefix={self.connections_prefix!r}, variables_prefix={self.variables_prefix!r})"
        )
