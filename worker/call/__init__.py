"""One call: the session and its parts (commands, listening, speaking, transfer, the event dump)."""
