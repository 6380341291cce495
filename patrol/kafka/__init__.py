"""Kafka plumbing without faust, shared by the worker and its child processes: where a key's
partition is, the internal topics and their creation, the group consumer every patrol process
uses, the batch records on the internal topics, per-partition producer batches, and a whole topic
read to its end."""
