"""The intake, a child process of the worker: it consumes the input topics with a plain aiokafka
consumer, dead-letters what it cannot use, locates and screens the rest, and re-keys it onto the
internal topics whose partitions own the state."""
