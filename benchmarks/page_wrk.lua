-- wrk script of the page benchmark: a fresh user id on every request, and a
-- one-line JSON summary ("WRK {...}") that benchmarks/page_wrk.py reads.
--   wrk -t1 -c16 -d5s -s benchmarks/page_wrk.lua http://127.0.0.1:8000 -- <tag>

local threads = {}
local counter = 0
local prefix = "/page?u="

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = "/page?u=" .. (args[1] or "w") .. "-" .. tid .. "-"
end

function request()
  counter = counter + 1
  return wrk.format("GET", prefix .. counter)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
