-- ARGV: one packed record per task (see store_record). Returns {index, holder id, ...} for each unique task
-- not stored because another task holds its lock (index: its place in ARGV, from 1); empty when all were.
local touched, held = {}, {}
for i = 1, #ARGV do
  local queue, holder = store_record(ARGV[i])
  if queue then
    touched[#touched + 1] = queue
  elseif holder then
    held[#held + 1] = i
    held[#held + 1] = holder
  end
end
wake_each(touched)
return held
