"""SMS warnings (CONTRACT §7), as production runs them: the outbox topic the grace agent writes,
the sender child process that works it, and the notifier that speaks to the gateway over HTTP.
The stub gateway for development and tests is `patrol.devtools.gateway`."""
