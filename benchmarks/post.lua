-- wrk script: POST one Open Inference Protocol v2 request body on every request.
--
-- The body is read from the file named by BENCH_BODY_FILE (benchmarks/run.py sets it), or from
-- benchmarks/body.json relative to the working directory: one breast-cancer row, 30 FP32 values.
--
--   BENCH_BODY_FILE=benchmarks/body.json wrk -t1 -c64 -d12s --latency -s benchmarks/post.lua \
--     http://127.0.0.1:8000/v2/models/breast-cancer/infer
--
-- With BENCH_HEADER_LENGTH=N the body is sent as Triton's binary tensor data extension: N bytes
-- of JSON followed by raw tensor bytes, with the header Inference-Header-Content-Length: N (the
-- body is then sent exactly as it is in the file; run.py writes it, asking for binary outputs).

local path = os.getenv("BENCH_BODY_FILE") or "benchmarks/body.json"
local file = assert(io.open(path, "rb"), "cannot open request body file " .. path)
local body = file:read("*a")
file:close()

local header_length = os.getenv("BENCH_HEADER_LENGTH")

wrk.method = "POST"
if header_length and header_length ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = header_length
else
  wrk.body = body:gsub("%s+$", "")
  wrk.headers["Content-Type"] = "application/json"
end

-- One extra line after wrk's own report: the deeper tail, in microseconds.
function done(summary, latency, requests)
  io.write(string.format("bench-tail: p99.9=%.0fus max=%.0fus\n",
    latency:percentile(99.9), latency.max))
end
