-- ARGV: consumer, id... Owned ids go back to the head of their queue in the given order (those marked
-- cancelled are dropped instead).
local owned = ownedkey(ARGV[1])
local back, queues = {}, {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call("lrem", owned, 1, id) > 0 then
    local record = redis.call("hget", INFLIGHT, id)
    redis.call("hdel", INFLIGHT, id)
    local queue = record and queue_of(record)
    if queue and not drop_if_cancelled(id) then
      back[#back + 1] = id
      queues[#back] = queue
    end
  end
end
for i = #back, 1, -1 do redis.call("lpush", qkey(queues[i]), back[i]) end
wake_each(queues)
return #back
