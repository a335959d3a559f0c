"""keyward.contrib.airflow.KeywardSecretsBackend in the real apache-airflow
(pinned in tests/airflow/, installed by tests/airflow/venv.sh into
target/airflow-venv, which test.sh builds before pytest), with a real
agent: Airflow's own Connection.get_connection_from_secrets and
Variable.get, configured only through AIRFLOW__SECRETS__*, return the
keys' values, then, after a rotation (stage + promote with the `keyward`
CLI), the new ones, in the same process."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import PACKAGE_ROOT

REPO = PACKAGE_ROOT.parent.parent
HERE = Path(__file__).resolve().parent / "airflow"


def airflow_python() -> str:
    """The Airflow venv's python, if venv.sh built it (test.sh runs it);
    else the test is skipped, saying why."""
    python = os.environ.get("KEYWARD_AIRFLOW_PYTHON") or str(REPO / "target" / "airflow-venv" / "bin" / "python")
    venv = Path(python).parent.parent
    if not any(venv.glob(".keyward-ready-*")):
        why = os.environ.get("KEYWARD_AIRFLOW_SKIP") or f"no Airflow venv at {venv}"
        pytest.skip(f"Airflow test not run: {why} (clients/python/tests/airflow/venv.sh builds it)")
    return python


def uri(password: str) -> bytes:
    return f"postgres://etl:{password}@db.internal:5432/warehouse".encode()


def api(token: str) -> bytes:
    return json.dumps({"conn_type": "http", "host": "billing.example.com", "password": token, "extra": {"timeout": 5}}).encode()


def test_airflow_reads_connections_and_variables_and_sees_a_rotation(agent):
    python = airflow_python()
    agent.put("prod/airflow-conn-etl_db", uri("pw_one"))
    agent.put("prod/airflow-conn-billing_api", api("tok_one"))
    agent.put("prod/airflow-var-api_token", b"var_one")
    agent.put("prod/airflow-var-settings", b'{"batch": 100}')

    with tempfile.TemporaryDirectory(prefix="kwaf-") as home:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "PYTHONPATH": str(PACKAGE_ROOT),
            "AIRFLOW_HOME": home,
            "AIRFLOW__SECRETS__BACKEND": "keyward.contrib.airflow.KeywardSecretsBackend",
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
                {
                    "socket": agent.socket,
                    "environment": "prod",
                    "connections_prefix": "airflow-conn-",
                    "variables_prefix": "airflow-var-",
                }
            ),
        }
        proc = subprocess.Popen(
            [python, str(HERE / "lookups.py")],
            env=env,
            cwd=home,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(Path(home) / "stderr", "w"),
            text=True,
        )
        logged: list[str] = []  # Airflow's own lines on stdout
        try:

            def read() -> dict:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("\n")
                proc.stdin.flush()
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        proc.wait(30)
                        err = (Path(home) / "stderr").read_text()[-4000:]
                        pytest.fail(f"lookups.py exited with {proc.returncode}:\n{''.join(logged)[-2000:]}\n{err}")
                    if line.startswith("lookup: "):
                        return json.loads(line.removeprefix("lookup: "))
                    logged.append(line)

            before = read()
            assert before["backends"][0] == "KeywardSecretsBackend", before["backends"]
            assert before["etl_db"] == ["postgres", "db.internal", 5432, "warehouse", "etl", "pw_one"]
            assert before["billing_api"] == ["http", "billing.example.com", "tok_one", {"timeout": 5}]
            assert before["api_token"] == "var_one"
            assert before["settings"] == {"batch": 100}

            for key, value in [
                ("prod/airflow-conn-etl_db", uri("pw_two")),
                ("prod/airflow-conn-billing_api", api("tok_two")),
                ("prod/airflow-var-api_token", b"var_two"),
            ]:
                agent.stage(key, value)
                agent.promote(key)

            after = read()
            assert after["etl_db"][-1] == "pw_two" and after["billing_api"][2] == "tok_two"
            assert after["api_token"] == "var_two"
            assert after["settings"] == {"batch": 100}
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output = "".join(logged) + (Path(home) / "stderr").read_text()
    for secret in ("pw_one", "pw_two", "tok_one", "tok_two"):
        assert secret not in output, f"{secret} in Airflow's output:\n{output[-4000:]}"
