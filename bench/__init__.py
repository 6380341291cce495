"""Benchmarks of the patrol worker against a raw aiokafka baseline (`python -m bench`)."""
