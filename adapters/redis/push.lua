-- ARGV: id, queue, payload. One runnable task: .delay()'s hot path, what enqueue does for it without
-- unpacking a record or a loop (Redis spends about a third less CPU on it than on enqueue's).
redis.call("hset", TASKS, ARGV[1], ARGV[3])
if redis.call("rpush", qkey(ARGV[2]), ARGV[1]) == 1 then wake(ARGV[2]) end
return 1
