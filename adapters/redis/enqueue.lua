-- ARGV: one packed record per task (see store_record). Returns {index, id, ...} for each task not stored under
-- its own id (index: its place in ARGV, from 1): a unique task whose lock another task holds (the holder's id),
-- an eta task that updated the waiting one of its dedup key (that one's); empty when every task has its own.
local touched, held = {}, {}
for i = 1, #ARGV do
  local queue, other = store_record(ARGV[i])
  if queue then touched[#touched + 1] = queue end
  if other then
    held[#held + 1] = i
    held[#held + 1] = other
  end
end
wake_each(touched)
return held
