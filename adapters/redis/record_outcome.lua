-- ARGV: id, ttl_ms, outcome document. Keeps a task's outcome on its own (see record_outcome in _lib.lua).
record_outcome(ARGV[1], ARGV[3], ARGV[2])
return 1
