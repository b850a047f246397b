-- ARGV: one record per task, "id\nqueue\neta_ms or empty\ndedup_key or empty\npayload".
local n = 0
for i = 1, #ARGV do
  local record = ARGV[i]
  local a = string.find(record, "\n", 1, true)
  local b = string.find(record, "\n", a + 1, true)
  local c = string.find(record, "\n", b + 1, true)
  local d = string.find(record, "\n", c + 1, true)
  store(string.sub(record, 1, a - 1), string.sub(record, a + 1, b - 1), string.sub(record, d + 1),
        string.sub(record, b + 1, c - 1), string.sub(record, c + 1, d - 1))
  n = n + 1
end
wake(n)
return n
