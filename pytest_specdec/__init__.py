"""pytest_specdec: benchmark suites of speculative decoding as regression-gated pytest cases (docs/suites.md).

The plugin split by job:

- hooks and options: ``plugin`` (hooks), ``settings`` (options, environment, ini), ``collection`` (suite files and
  case items);
- suite parsing: ``yaml_source`` (YAML with line numbers), ``suite`` (the schema), ``prompts``, ``cases`` (ids);
- running: ``session`` (state of a run), ``models`` (load once, free when done), ``runner``, ``measurement``;
- storage: ``baselines``, ``machine`` (machine class, environment, commit);
- comparison and report: ``gating``, ``summary`` (through ``specdec.report``).
"""
