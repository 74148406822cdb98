-- wrk script for bench_hooks.py: every request gets its own signed JWT (unique jti) and hookInstance.
-- Tokens are read from BENCH_TOKENS (one per line) and strided by thread so no two threads share one.
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  tokens = {}
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    tokens[#tokens + 1] = line
  end
  local file = io.open(os.getenv("BENCH_BODY"), "rb")
  body = file:read("*a")
  file:close()
  stride = tonumber(os.getenv("BENCH_THREADS"))
  n = id
end

function request()
  n = n + stride
  local token = tokens[(n % #tokens) + 1]
  local payload = body:gsub("HOOK%-INSTANCE", "bench-" .. id .. "-" .. n)
  return wrk.format("POST", wrk.path, {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}, payload)
end
