"""What development, demos, tests and benchmarks run beside patrol, never production: the local
Kafka broker, the Prometheus runner, the stub SMS gateway, the simulators and the demo."""
