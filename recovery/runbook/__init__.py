"""Runbooks: incident steps as YAML files (`spec`), run and resumed step by step with
their state in `_recovery` (`engine`), and the incident report of a run (`report`)."""
