"""The worker process: the faust app with its changelogged tables and stateful agents, its web
pages (/metrics, /healthz, /readyz) and the child processes it keeps running (the intake and
the SMS sender). Where patrol goes around faust is written once, in ``faust_ext``."""
