"""``edgesplit bench``: measurements that write JSON (docs/benchmarks.md). One module per subcommand:
``serve`` (a split model served by local workers), ``faults`` (coded FC layers under stragglers and
failures), ``int8`` (int8 QDQ parts against float32)."""
