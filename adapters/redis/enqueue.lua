-- ARGV: one packed record per task (see store_record).
local touched = {}
for i = 1, #ARGV do
  touched[#touched + 1] = store_record(ARGV[i])
end
wake_each(touched)
return #ARGV
