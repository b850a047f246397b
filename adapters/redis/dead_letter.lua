-- ARGV: consumer, id, dead letter record (JSON). The dead list is newest first.
disown(ARGV[1], ARGV[2])
if drop_if_cancelled(ARGV[2]) then return 0 end
redis.call("hdel", TASKS, ARGV[2])
redis.call("hdel", CRASHES, ARGV[2])
redis.call("lpush", DEAD, ARGV[3])
unlock({ARGV[2]})
return 1
