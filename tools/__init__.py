"""Tools run from the repository root beside the library, not installed with it: `python -m tools.bench`
(`make bench`), `python -m tools.demo` (`make demo`) and `python -m tools.pattern` (`make pattern`)."""
