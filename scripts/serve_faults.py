#!/usr/bin/env python3
"""serve_faults.py — faults against `slimkv serve`: the server stays up and its memory returns
to its baseline.

1. clients that disconnect mid-stream (after a few chunks), 2. malformed bodies (random bytes,
truncated and deeply nested JSON, wrong types, invalid UTF-8, huge numbers), 3. slow bodies
(slowloris: a byte every second; the server drops them after --timeout while serving others),
4. --requests small requests in a row (default 10,000). RSS is read from /proc after a warm-up
(baseline) and after each phase. Writes bench/serve/faults-cpu.json (or --out).
Usage: python3 scripts/serve_faults.py [--requests 10000] [--model DIR]
"""
import argparse, http.client, json, os, random, socket, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_common import ROOT, Server, default_model, provenance

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--requests", type=int, default=10000)
ap.add_argument("--out", default=os.path.join(ROOT, "bench", "serve", "faults-cpu.json"))
ap.add_argument("--cli", default=None, help="the slimkv binary (e.g. build-asan/slimkv)")
a = ap.parse_args()
model = a.model or default_model()
name = os.path.basename(model.rstrip("/"))
srv = Server(model, ["-t", "1", "--parallel", "4", "--timeout", "3", "--max-body", "65536"], cli=a.cli)
out = {**provenance(sys.argv), "server": " ".join(srv.cmd)}
rng = random.Random(7)


def post(body, path="/v1/completions", timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    c.request("POST", path, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def ok_request(i=0):
    st, data = post(json.dumps({"model": name, "prompt": f"Request {i}: the", "max_tokens": 2, "temperature": 0}))
    return st == 200 and json.loads(data)["usage"]["completion_tokens"] >= 1


for i in range(200):  # warm-up: every slot has held a request, allocations settled
    ok_request(i)
out["rss_kb_baseline"] = srv.rss_kb()
print("baseline RSS", out["rss_kb_baseline"], "KiB")

# 1. disconnects mid-stream
t = time.time()
n_disc = 0
for i in range(100):
    s = socket.create_connection(("127.0.0.1", srv.port))
    body = json.dumps({"model": name, "prompt": f"Disconnect {i}", "max_tokens": 500, "temperature": 0.8,
                       "stream": True, "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = s.recv(2048 if i % 2 else 1)  # some read a chunk, some only a byte
    s.close()
    n_disc += bool(got)
time.sleep(1)
out["disconnects"] = {"clients": 100, "got_data_then_closed": n_disc, "server_up": ok_request(), "seconds": round(time.time() - t, 1)}
print("disconnects", out["disconnects"])

# 2. malformed bodies
bad = [b"", b"{", b"[", b"null", b"1e999999", b'"x"', b"{\"model\":", b"\xff\xfe\x00garbage", b"{" * 5000,
       b"[" * 100000, json.dumps({"model": name, "prompt": "\ud800"}).encode(), b'{"model":"' + b"\xc3\x28" + b'"}',
       json.dumps({"model": name, "prompt": "x", "max_tokens": 1e300}).encode(),
       json.dumps({"model": name, "prompt": [1.5]}).encode(), json.dumps({"model": name, "prompt": "x", "stop": [None]}).encode(),
       json.dumps({"model": name, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
       json.dumps({"model": name, "prompt": "x", "kv": {"policy": "snapkv", "budget": -1}}).encode()]
for i in range(300):
    n = rng.randrange(1, 400)
    bad.append(bytes(rng.randrange(256) for _ in range(n)))
    good = json.dumps({"model": name, "prompt": "abc", "max_tokens": 3, "temperature": 0.5, "stop": ["x"]})
    cut = rng.randrange(1, len(good))
    bad.append(good[:cut].encode())
codes = {}
for i, b in enumerate(bad):
    path = "/v1/chat/completions" if i % 3 == 0 else "/v1/completions"
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    c.request("POST", path, b, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    codes[r.status] = codes.get(r.status, 0) + 1
    if r.status >= 500 or (r.status == 400 and b'"error"' not in data):
        print("unexpected", r.status, data[:200])
out["malformed"] = {"bodies": len(bad), "status_counts": codes, "server_up": ok_request()}
print("malformed", out["malformed"])

# 3. slow bodies (slowloris) while others are served
def slow(res, i):
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.time()
    try:
        for k in range(60):
            s.sendall(b" ")
            time.sleep(1)
        res[i] = None
    except OSError:
        res[i] = time.time() - t0
    s.close()


slow_res = [None] * 20
ths = [threading.Thread(target=slow, args=(slow_res, i)) for i in range(20)]
for th in ths:
    th.start()
time.sleep(1)
served = sum(ok_request(i) for i in range(50))
for th in ths:
    th.join()
out["slow_bodies"] = {"clients": 20, "dropped": sum(r is not None for r in slow_res),
                      "dropped_after_s_max": round(max([r for r in slow_res if r is not None] or [0]), 1),
                      "others_served_meanwhile": served, "server_up": ok_request()}
print("slow bodies", out["slow_bodies"])
out["rss_kb_after_faults"] = srv.rss_kb()

# 4. many requests in a row
t = time.time()
fails = 0
rss_trace = []
for i in range(a.requests):
    if not ok_request(i):
        fails += 1
    if i % 1000 == 0:
        rss_trace.append(srv.rss_kb())
el = time.time() - t
out["in_a_row"] = {"requests": a.requests, "failures": fails, "seconds": round(el, 1),
                   "requests_per_s": round(a.requests / el, 1), "rss_kb_every_1000": rss_trace}
out["rss_kb_end"] = srv.rss_kb()
out["rss_growth_kb"] = out["rss_kb_end"] - out["rss_kb_baseline"]
print("in a row", out["in_a_row"])
out["server_alive_at_end"] = srv.alive()
out["server_exit"] = srv.stop()
json.dump(out, open(a.out, "w"), indent=1)
print(json.dumps(out, indent=1))
ok = (out["server_exit"] == 0 and fails == 0 and out["malformed"]["server_up"] and
      not any(k >= 500 for k in codes) and out["slow_bodies"]["dropped"] == 20)
sys.exit(0 if ok else 1)
