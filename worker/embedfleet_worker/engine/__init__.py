"""The engine: scheduling, execution, tokenisation and pooling; in the server it runs in its
own process (process, wire), reached through client."""
