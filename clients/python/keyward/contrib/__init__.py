"""Integrations of keyward with other tools; each module imports its tool,
which this package does not depend on (install it yourself):

- :mod:`keyward.contrib.airflow`: an Apache Airflow secrets backend,
  :class:`~keyward.contrib.airflow.KeywardSecretsBackend`.
"""
