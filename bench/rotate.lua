-- wrk script: rotate through a file of request paths (one a line, query string included,
-- e.g. SigV4 presigned URLs made up front), so wrk signs nothing and stays out of the way.
--
--   wrk -t1 -c64 -d5s -s bench/rotate.lua http://127.0.0.1:PORT -- METHOD PATHS_FILE [BODY_FILE]
--
-- With a BODY_FILE (PUT), the first 16 bytes of each body are replaced by a per-request
-- counter so no two bodies are equal (a content-addressed store must not get free dedupe).
-- done() prints one line "WRK_JSON {...}" that bench/run.py parses.

local paths = {}
local idx = 0
local method = "GET"
local body = nil
local tail = nil
local n = 0
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  method = args[1] or "GET"
  for line in io.lines(args[2]) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  if args[3] and #args[3] > 0 then
    local f = assert(io.open(args[3], "rb"))
    body = f:read("*a")
    f:close()
    tail = body:sub(17)
  end
  -- spread the threads over the list
  idx = ((tid or 0) * math.floor(#paths / 2)) % #paths
  n = (tid or 0) * 1000000000
end

function request()
  idx = idx % #paths + 1
  if body then
    n = n + 1
    return wrk.format(method, paths[idx], nil, string.format("%016x", n) .. tail)
  end
  return wrk.format(method, paths[idx], nil, nil)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d, ' ..
    '"lat_p50_us": %d, "lat_p99_us": %d, "lat_max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
