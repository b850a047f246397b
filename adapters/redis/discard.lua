-- ARGV: consumer, id, queue, why ("expired" or "cancelled"). The task ends unrun, for good.
disown(ARGV[1], ARGV[2])
redis.call("hdel", TASKS, ARGV[2])
redis.call("hdel", CRASHES, ARGV[2])
redis.call("hdel", CANCELS, ARGV[2])
if ARGV[4] == "expired" then redis.call("hincrby", EXPIRED, ARGV[3], 1) end
unlock({ARGV[2]})
return 1
