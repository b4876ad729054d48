#!/usr/bin/env python3
"""serve_load.py — load test of `slimkv serve`: many concurrent streaming clients.

Starts the server (kvt-s on the CPU by default), builds a pool of requests with mixed prompt
lengths (snippets of the validation corpus, a few to ~1000 tokens), per-request KV policies
(full, snapkv, pyramidkv, window, h2o, tova, quant) and lengths, all greedy; runs each alone
once (the reference), then --clients concurrent streaming clients for --duration seconds, each
sending pool requests back to back. Checks every stream's text equals its solo run (0 lost or
corrupted responses), and reports p50/p99 time to first token and inter-token latency,
aggregate generated tokens/s, and, for comparison, `slimkv bench` offline decode on the same
machine: one stream and B streams stepped together (the batched decode the server runs). Writes JSON and a summary under bench/serve/ (or --out).
Usage: python3 scripts/serve_load.py [--clients 64] [--duration 600] [--threads 1] [--model DIR]
"""
import argparse, http.client, json, lzma, os, random, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_common import ROOT, Server, default_model, provenance

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--duration", type=float, default=600)
ap.add_argument("--parallel", type=int, default=64)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--pool", type=int, default=48)
ap.add_argument("--backend", default="cpu")
ap.add_argument("--out", default=os.path.join(ROOT, "bench", "serve", "load-cpu.json"))
ap.add_argument("--cli", default=None)
ap.add_argument("--corpus", default=None, help="prompt text (default ../shared/data/corpus.val.txt.xz)")
ap.add_argument("--policies", default="mixed", choices=["mixed", "full"],
                help="mixed: per-request KV policies; full: every request under the full cache")
ap.add_argument("--server-args", default="", help="more `slimkv serve` flags, e.g. '--ctx 2048'")
ap.add_argument("--bench-args", default=None,
                help="the offline `slimkv bench` flags (default: single stream and batched decode, 1/4/16/64; "
                     "'none': no offline bench)")
a = ap.parse_args()

model = a.model or default_model()
name = os.path.basename(model.rstrip("/"))
corpus = a.corpus or os.path.join(ROOT, "..", "shared", "data", "corpus.val.txt.xz")
text = lzma.open(corpus, "rt", errors="replace").read(2_000_000) if os.path.exists(corpus) else \
    open(os.path.join(ROOT, "README.md")).read() * 20
rng = random.Random(1234)
POLICIES = [None, None, {"policy": "snapkv", "budget": 0.5}, {"policy": "pyramidkv", "budget": 0.5},
            {"policy": "window", "budget": 0.5}, {"policy": "h2o", "budget": 0.5}, {"policy": "tova", "budget": 0.5},
            {"policy": "quant", "quant_bits": 8}]
if a.backend == "cuda":
    POLICIES = [p for p in POLICIES if not p or p["policy"] not in ("quant",)]
if a.policies == "full":
    POLICIES = [None]
pool = []
system = text[:1500]  # a shared "system prompt" (about 400 tokens) before a quarter of the prompts
for i in range(a.pool):
    chars = rng.choice([40, 300, 1200] + ([] if i % 4 == 1 else [2400]))  # about 10 to 1000 tokens
    start = rng.randrange(0, len(text) - chars)
    prompt = (system if i % 4 == 1 else "") + text[start:start + chars]
    body = {"model": name, "prompt": prompt, "max_tokens": rng.choice([16, 32, 64]),
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": i % 2 == 0}
    kv = POLICIES[i % len(POLICIES)]
    if kv:
        body["kv"] = kv
    pool.append(body)

srv = Server(model, ["-t", str(a.threads), "--parallel", str(a.parallel), "--queue", str(max(4 * a.clients, 64)),
                     "--backend", a.backend, *a.server_args.split()], cli=a.cli)


def stream(body):
    """One streamed request: (text, completion tokens, ttft, [inter-chunk gaps], error)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        return None, 0, 0, [], f"HTTP {r.status}: {r.read()[:200]!r}"
    parts, gaps, ttft, last, usage, done = [], [], None, None, None, False
    for raw in r:
        line = raw.decode().rstrip("\n")
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            break
        ev = json.loads(line[6:])
        if "error" in ev:
            return None, 0, 0, [], str(ev["error"])
        now = time.perf_counter()
        if ev["choices"]:
            t = ev["choices"][0]["text"]
            if t:
                if ttft is None:
                    ttft = now - t0
                else:
                    gaps.append(now - last)
                last = now
                parts.append(t)
        if ev.get("usage"):
            usage = ev["usage"]
    c.close()
    if usage:
        stream.last_prompt[threading.get_ident()] = usage["prompt_tokens"]
    if not done or not usage:
        return None, 0, 0, [], "stream ended without usage and [DONE]"
    return "".join(parts), usage["completion_tokens"], ttft or 0, gaps, None


stream.last_prompt = {}
prov = provenance(sys.argv)
print(f"server {' '.join(srv.cmd)} port {srv.port}; {len(pool)} requests in the pool")
t = time.perf_counter()
solo, kept = [], []
for b in pool:
    s = stream(b)
    if s[4] and "maximum context length" in s[4]:  # a snippet that tokenizes long: left out
        continue
    if s[4]:
        srv.stop()
        sys.exit("solo run failed: " + s[4])
    solo.append(s[0])
    kept.append(b)
pool = kept
solo_s = time.perf_counter() - t
print(f"solo references: {solo_s:.1f} s", flush=True)
rss0 = srv.rss_kb()
load0 = os.getloadavg()

lock = threading.Lock()
res = {"prompt_tokens": 0, "requests": 0, "ok": 0, "mismatch": 0, "errors": 0, "tokens": 0, "ttft": [], "itl": [], "err_samples": [],
       "by_policy": {}}
deadline = time.perf_counter() + a.duration


def client(ci):
    r = random.Random(ci)
    while time.perf_counter() < deadline:
        k = r.randrange(len(pool))
        txt, ntok, ttft, gaps, err = stream(pool[k])
        ptok = ntok and stream.last_prompt.get(threading.get_ident(), 0)
        pol = (pool[k].get("kv") or {"policy": "full"})["policy"]
        with lock:
            res["requests"] += 1
            bp = res["by_policy"].setdefault(pol, {"requests": 0, "mismatch": 0})
            bp["requests"] += 1
            if err:
                res["errors"] += 1
                if len(res["err_samples"]) < 5:
                    res["err_samples"].append(err)
                continue
            if txt != solo[k]:
                res["mismatch"] += 1
                bp["mismatch"] += 1
                if len(res["err_samples"]) < 5:
                    res["err_samples"].append(f"request {k}: [{txt[:80]!r}] vs solo [{solo[k][:80]!r}]")
            else:
                res["ok"] += 1
            res["tokens"] += ntok
            res["prompt_tokens"] += ptok
            res["ttft"].append(ttft)
            res["itl"].extend(gaps)


t0 = time.perf_counter()
ths = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
for th in ths:
    th.start()
for th in ths:
    th.join()
wall = time.perf_counter() - t0
metrics = http.client.HTTPConnection("127.0.0.1", srv.port)
metrics.request("GET", "/metrics")
mtext = metrics.getresponse().read().decode()
rss1 = srv.rss_kb()
rc = srv.stop()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else None


def metric(n):
    for l in mtext.splitlines():
        if l.startswith(n + " "):
            return float(l.split()[1])
    return None


def summary(offline, bcmd):
    steps, seqs = metric("slimkv_decode_steps_total"), metric("slimkv_decode_step_sequences_total")
    return {**prov, "server": " ".join(srv.cmd), "clients": a.clients, "duration_s": round(wall, 1), "pool": len(pool),
           "requests": res["requests"], "ok": res["ok"], "mismatch": res["mismatch"], "errors": res["errors"],
           "error_samples": res["err_samples"], "by_policy": res["by_policy"], "generated_tokens": res["tokens"],
           "tokens_per_s": round(res["tokens"] / wall, 1), "prompt_tokens": res["prompt_tokens"],
           "loadavg_at_start": load0, "solo_references_s": round(solo_s, 1),
           "prompt_tokens_per_s": round(res["prompt_tokens"] / wall, 1), "loadavg_at_end": os.getloadavg(),
           "ttft_p50_ms": round(1000 * pct(res["ttft"], 50), 1), "ttft_p99_ms": round(1000 * pct(res["ttft"], 99), 1),
           "itl_p50_ms": round(1000 * pct(res["itl"], 50), 2), "itl_p99_ms": round(1000 * pct(res["itl"], 99), 2),
           "mean_sequences_per_decode_step": round(seqs / steps, 2) if steps else None,
           "prefix_cache_hit_rate": metric("slimkv_prefix_cache_hit_rate"),
           "decode_forward_calls": metric("slimkv_decode_forward_calls_total"), "decode_steps": steps,
           "scheduler_seconds": {ph: metric(f'slimkv_scheduler_seconds_total{{phase="{ph}"}}')
                                 for ph in ("start", "prefill", "forward", "token", "account")},
           "offline_decode_tps": offline, "offline_command": " ".join(bcmd), "policies": a.policies,
           "rss_kb_after_solo": rss0, "rss_kb_after_load": rss1, "server_exit": rc}


os.makedirs(os.path.dirname(a.out), exist_ok=True)
json.dump(summary(None, []), open(a.out, "w"), indent=1)  # the load's numbers before the offline bench
print("load done:", json.dumps(summary(None, [])), flush=True)

bench_json = "/tmp/serve_load_bench.json"
if a.bench_args == "none":  # the offline bench runs elsewhere (serve_load_gpu.sh runs it before the load)
    bcmd, offline = [], None
else:
    bargs = (a.bench_args or "--pp 0 --tg 64 -d 0,512 --batches 1,4,16,64 -r 3").split()
    bcmd = [a.cli or os.path.join(ROOT, "build", "slimkv"), "bench", "-m", model, "-t", str(a.threads), *bargs,
            "-o", bench_json, "--backend", a.backend]
    subprocess.run(bcmd, capture_output=True, env=dict(os.environ, OMP_WAIT_POLICY="passive"))
    try:
        offline = {r["test"]: r.get("tps_mean", r.get("tokens_per_s")) for r in json.load(open(bench_json))["results"]}
    except Exception as e:
        offline = {"error": str(e)}
out = summary(offline, bcmd)
json.dump(out, open(a.out, "w"), indent=1)
print(json.dumps(out, indent=1))
sys.exit(0 if res["mismatch"] == 0 and res["errors"] == 0 and rc == 0 else 1)
