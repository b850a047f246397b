-- ARGV: consumer, id... Owned ids go back to the head of their queue in the given order (those marked
-- cancelled are dropped instead).
local owned = ownedkey(ARGV[1])
local back, queues, released = {}, {}, {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call("lrem", owned, 1, id) > 0 then
    local record = redis.call("hget", INFLIGHT, id)
    released[#released + 1] = id
    local queue = record and queue_of(record)
    if queue and not drop_if_cancelled(id) then
      back[#back + 1] = id
      queues[#back] = queue
    end
  end
end
if #released > 0 then forget_in_flight(released) end
for i = #back, 1, -1 do redis.call("lpush", qkey(queues[i]), back[i]) end
wake_each(queues)
return #back
