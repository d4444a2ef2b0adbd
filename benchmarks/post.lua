-- wrk script: POST one Open Inference Protocol v2 JSON body on every request.
--
-- The body is read from the file named by BENCH_BODY_FILE (benchmarks/run.py sets it), or from
-- benchmarks/body.json relative to the working directory: one breast-cancer row, 30 FP32 values.
--
--   BENCH_BODY_FILE=benchmarks/body.json wrk -t1 -c64 -d12s --latency -s benchmarks/post.lua \
--     http://127.0.0.1:8000/v2/models/breast-cancer/infer

local path = os.getenv("BENCH_BODY_FILE") or "benchmarks/body.json"
local file = assert(io.open(path, "rb"), "cannot open request body file " .. path)
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body:gsub("%s+$", "")
wrk.headers["Content-Type"] = "application/json"

-- One extra line after wrk's own report: the deeper tail, in microseconds.
function done(summary, latency, requests)
  io.write(string.format("bench-tail: p99.9=%.0fus max=%.0fus\n",
    latency:percentile(99.9), latency.max))
end
