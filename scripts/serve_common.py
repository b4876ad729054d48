"""serve_common.py — start `slimkv serve` on a free loopback port and stop it (for the serve_*.py scripts)."""
import os, re, subprocess, sys, time, platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_model():
    for d in (os.path.join(ROOT, "..", "shared", "models", "kvt-s"), os.path.join(ROOT, "models", "kvt-s")):
        if os.path.exists(os.path.join(d, "config.json")):
            return os.path.normpath(d)
    sys.exit("kvt-s not found")


class Server:
    def __init__(self, model, args=(), cli=None):
        cli = cli or os.path.join(ROOT, "build", "slimkv")
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        self.cmd = [cli, "serve", "-m", model, "--port", "0", *args]
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            self.p.kill()
            sys.exit("server did not start: " + line + self.p.stderr.read())
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def rss_kb(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        self.p.terminate()
        try:
            return self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return -9


def provenance(argv):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    if os.environ.get("SKV_COMMIT"):  # a copy run elsewhere (the GPU machine): the commit it was built from
        commit, dirty = os.environ["SKV_COMMIT"], ""
    cpu = "?"
    try:
        cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except Exception:
        pass
    return {"commit": commit + ("-dirty" if dirty else ""), "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()}",
            "command": " ".join(argv), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
