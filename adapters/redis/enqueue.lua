-- ARGV: groups of 5 per task: id, queue, payload, eta_ms or "", dedup_key or "".
local n = 0
for i = 1, #ARGV, 5 do
  store(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  n = n + 1
end
wake(n)
return n
