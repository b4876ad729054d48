#!/usr/bin/env python3
"""serve_openai.py — the official `openai` Python client and curl against `slimkv serve`.

Starts the server on a free loopback port (kvt-s by default), then: completions and chat
completions, streamed and not, with the openai client (pip install openai); the same four with
curl; /v1/models, /health and a bad request. Prints a transcript and writes it to
bench/serve/openai_curl.txt (or --out). Exit status 1 if any step fails.
Usage: python3 scripts/serve_openai.py [--model DIR] [--out FILE]
"""
import argparse, json, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_common import ROOT, Server, default_model, provenance

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=None)
ap.add_argument("--out", default=os.path.join(ROOT, "bench", "serve", "openai_curl.txt"))
a = ap.parse_args()
import openai

model = a.model or default_model()
srv = Server(model, ["-t", "1", "--parallel", "2"])
name = os.path.basename(model.rstrip("/"))
log, failures = [], []


def say(s=""):
    print(s)
    log.append(s)


def check(cond, what):
    say(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


prov = provenance(sys.argv)
say(f"# slimkv serve with the openai client {openai.__version__} and curl")
for k, v in prov.items():
    say(f"# {k}: {v}")
say(f"# server: {' '.join(srv.cmd)}  (port {srv.port})")
say()
client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
prompt = "It is a truth universally acknowledged, that"
try:
    say("## openai: completions.create")
    r = client.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0)
    say(r.model_dump_json(indent=1))
    ref = r.choices[0].text
    check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 24, "completion: 24 tokens, length")

    say("\n## openai: completions.create(stream=True, stream_options={'include_usage': True})")
    parts, usage = [], None
    for ch in client.completions.create(model=name, prompt=prompt, max_tokens=24, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices:
            parts.append(ch.choices[0].text)
        if ch.usage:
            usage = ch.usage
    say("chunks: " + json.dumps(parts))
    say("usage: " + (usage.model_dump_json() if usage else "none"))
    check("".join(parts) == ref and usage and usage.completion_tokens == 24, "streamed completion = non-streamed")

    say("\n## openai: chat.completions.create")
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is a kernel?"}]
    r = client.chat.completions.create(model=name, messages=msgs, max_tokens=32, temperature=0, logprobs=True,
                                       top_logprobs=2)
    say(r.model_dump_json(indent=1)[:3000])
    cref = r.choices[0].message.content
    check(r.choices[0].message.role == "assistant" and r.choices[0].logprobs.content, "chat: assistant message, logprobs")

    say("\n## openai: chat.completions.create(stream=True)")
    parts = []
    for ch in client.chat.completions.create(model=name, messages=msgs, max_tokens=32, temperature=0, stream=True):
        if ch.choices and ch.choices[0].delta.content:
            parts.append(ch.choices[0].delta.content)
    say("deltas: " + json.dumps(parts))
    check("".join(parts) == cref, "streamed chat = non-streamed")

    say("\n## openai: models.list")
    ms = client.models.list()
    say(json.dumps([m.model_dump() for m in ms.data]))
    check(ms.data[0].id == name, "models.list")

    say("\n## openai: a bad request (temperature 5)")
    try:
        client.completions.create(model=name, prompt=prompt, max_tokens=4, temperature=5)
        check(False, "bad request refused")
    except openai.BadRequestError as e:
        say(f"BadRequestError {e.status_code}: {e.body}")
        check(e.status_code == 400, "bad request refused with 400")

    def curl(args, label):
        cmd = ["curl", "-sS", "--max-time", "60", *args]
        say(f"\n## curl: {label}\n$ " + " ".join(c if " " not in c and "{" not in c else "'" + c + "'" for c in cmd))
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        say(out.rstrip())
        return out

    body = {"model": name, "prompt": prompt, "max_tokens": 24, "temperature": 0}
    out = curl([srv.url + "/v1/completions", "-H", "Content-Type: application/json", "-d", json.dumps(body)],
               "POST /v1/completions")
    check(json.loads(out)["choices"][0]["text"] == ref, "curl completion = openai completion")
    body["stream"] = True
    out = curl(["-N", srv.url + "/v1/completions", "-H", "Content-Type: application/json", "-d", json.dumps(body)],
               "POST /v1/completions, stream")
    text = "".join(json.loads(l[6:])["choices"][0]["text"] for l in out.splitlines()
                   if l.startswith("data: {") and json.loads(l[6:])["choices"])
    check(text == ref and out.rstrip().endswith("data: [DONE]"), "curl stream = completion, ends with [DONE]")
    cbody = {"model": name, "messages": msgs, "max_tokens": 32, "temperature": 0}
    out = curl([srv.url + "/v1/chat/completions", "-H", "Content-Type: application/json", "-d", json.dumps(cbody)],
               "POST /v1/chat/completions")
    check(json.loads(out)["choices"][0]["message"]["content"] == cref, "curl chat = openai chat")
    cbody["stream"] = True
    out = curl(["-N", srv.url + "/v1/chat/completions", "-H", "Content-Type: application/json", "-d", json.dumps(cbody)],
               "POST /v1/chat/completions, stream")
    text = "".join(json.loads(l[6:])["choices"][0]["delta"].get("content") or "" for l in out.splitlines()
                   if l.startswith("data: {") and json.loads(l[6:])["choices"])
    check(text == cref, "curl chat stream = chat")
    curl([srv.url + "/health"], "GET /health")
    curl([srv.url + "/v1/models"], "GET /v1/models")
    out = curl([srv.url + "/v1/completions", "-H", "Content-Type: application/json", "-d",
                '{"model": "' + name + '", "prompt": "x", "max_tokens": -3}'], "POST a negative max_tokens")
    check(json.loads(out)["error"]["param"] == "max_tokens", "curl bad request: error object naming max_tokens")
    out = curl([srv.url + "/metrics"], "GET /metrics (first lines)")
finally:
    rc = srv.stop()
    say(f"\nserver exit status {rc}")
    check(rc == 0, "server stopped cleanly on SIGTERM")
say(f"\n{len(failures)} failures")
os.makedirs(os.path.dirname(a.out), exist_ok=True)
with open(a.out, "w") as f:
    f.write("\n".join(log) + "\n")
sys.exit(1 if failures else 0)
