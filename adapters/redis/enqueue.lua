-- ARGV: one packed record per task (see store_record).
for i = 1, #ARGV do
  store_record(ARGV[i])
end
wake(#ARGV)
return #ARGV
