-- ARGV: consumer, id, dead letter record (JSON)[, outcome ttl_ms, outcome document]. The dead list is newest
-- first; the outcome (keep_result) is kept in the same step.
disown(ARGV[1], ARGV[2])
if drop_if_cancelled(ARGV[2]) then return 0 end
redis.call("hdel", TASKS, ARGV[2])
redis.call("hdel", CRASHES, ARGV[2])
redis.call("lpush", DEAD, ARGV[3])
unlock({ARGV[2]})
if ARGV[5] then record_outcome(ARGV[2], ARGV[5], ARGV[4]) end
return 1
