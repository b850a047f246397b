-- ARGV: cutoff ms ("" forgets every worker given; else only those whose heartbeat is still older than the
-- cutoff, so one that beat again meanwhile stays), the prefix of a worker's private broadcast queue
-- (hexq.core.queues), worker id... Drops each worker's heartbeat and info, and its private queue with the
-- broadcast copies waiting there (payloads and crash counts), its idle marks and tokens: nobody serves
-- that queue any more, and a broadcast sent after this finds no heartbeat, so none is left behind. Copies
-- still owned by a child are settled as any task. Returns how many known workers were forgotten.
local cutoff, prefix = ARGV[1], ARGV[2]
local forgotten = 0
for i = 3, #ARGV do
  local worker = ARGV[i]
  local beat = redis.call("zscore", WORKERS, worker)
  if cutoff == "" or (beat and tonumber(beat) < tonumber(cutoff)) then
    redis.call("zrem", WORKERS, worker)
    redis.call("hdel", WORKERINFO, worker)
    local queue = prefix .. worker
    local copies = redis.call("lrange", qkey(queue), 0, -1)
    call_many("hdel", TASKS, copies)
    call_many("hdel", CRASHES, copies)
    redis.call("del", qkey(queue), idlekey(queue), armedkey(queue), wakekey(queue))
    if beat then forgotten = forgotten + 1 end
  end
end
return forgotten
