"""`patrol demo`: the whole loop, live, for an audience.

One command starts a local broker (unless one answers already), the stub SMS gateway, a worker,
Prometheus (when installed), the simulators and the simulated dispatch system, then shows what
happens: detections coming in, SMS warnings, parking grace cases closing as violations or
self-corrected, each enforcement task as it reaches the dispatch topic, with its Chinese
summary, and the lamps of the open tasks from the status topic.

- `lamps`: pure — the status records' latest per task, the lamps, the closing shares;
- `report`: pure — reading a scrape, tallying tasks, the summary's rows and line, the report;
- `display`: the live view (a rich Live table on a terminal, plain lines otherwise);
- `processes`: the children, each a `patrol` subcommand with its own log;
- `run`: DemoRun, which starts, watches and stops everything; the broker plan;
- `cli`: the click command.
"""

from patrol.devtools.demo.cli import demo_command, main

__all__ = ["demo_command", "main"]
