"""Runbooks: incident steps as YAML files (`spec`: loading, parameters; `conditions`:
the `when` language; `steps`: the table of step kinds, whose functions are in `runners`),
run and resumed step by step (`engine`) with their state in `_recovery` (`state`), and the
incident report of a run (`report/`)."""
