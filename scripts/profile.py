"""Instructions per request on the LLM path, counted by callgrind.

    python3 scripts/profile.py [chat|sse] [seconds]

Builds nothing: run it after a release build with symbols, e.g.

    CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \\
      cargo build --release --bins --example mock_upstream --target-dir target/prof

It starts the benchmark's LLM upstream (scripts/bench.py's nginx answering a
fixed chat completion, and the mock upstream for streams) and a gateway
under `valgrind --tool=callgrind` with the same limited token, warms it up,
zeroes the counters, sends one connection of `chat` (the 3 KB chat body) or
`sse` (100-event streams) for the given seconds, and prints the
instructions per request (per event for `sse`) of every thread of the
gateway, the functions that cost the most by themselves, and the
inclusive cost of the gateway's phases (PROFILE_TOP=N shows N functions;
PROFILE_KEEP=FILE keeps callgrind's output there, for callgrind_annotate). Instruction counts do not move
with the machine's load, as times do: use them to compare two builds.
"""

import collections
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

PROF = os.path.join(bench.ROOT, "target", "prof", "release")

# The phases whose inclusive cost is shown (a name's start, as callgrind has it).
PHASES = [
    ("forward: authenticate, rules, send, routing", "chatgpt_gateway::gateway::Gateway::forward::{{closure}}"),
    ("rules: the allowlist (parses the body's view)", "<chatgpt_gateway::policy::allowlist::Allowlist as chatgpt_gateway::policy::Policy>::check::{{closure}}"),
    ("rules: admission", "<chatgpt_gateway::spend::enforce::Enforce as chatgpt_gateway::policy::Policy>::check::{{closure}}"),
    ("the upstream connection (hyper's client)", "chatgpt_gateway::pool::Pool::connect::{{closure}}::{{closure}}"),
    ("usage read from the answer", "<chatgpt_gateway::usage::tap::UsageTap as chatgpt_gateway::body::Step>::end"),
    ("usage read from stream events", "<chatgpt_gateway::usage::tap::UsageTap as chatgpt_gateway::body::Step>::data"),
    ("settlement (journal, ledger)", "<chatgpt_gateway::spend::enforce::Settle as chatgpt_gateway::record::Finish>::finish::{{closure}}"),
    ("the journal's line", "chatgpt_gateway::spend::journal::Journal::append"),
    ("the access line", "<chatgpt_gateway::access_log::AccessLog as chatgpt_gateway::record::Finish>::finish"),
    ("the SQLite writer thread (behind)", "chatgpt_gateway::spend::sqlite::write_behind"),
]


def parse(path):
    """Self cost per function, and inclusive cost per (caller, callee)."""
    names, own, calls = {}, collections.Counter(), collections.Counter()
    fn = callee = None
    after_calls = False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", line)
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                name = names.get(m.group(2), m.group(2))
                if m.group(1) == "fn":
                    fn = name
                else:
                    callee = name
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                if after_calls:
                    if callee != fn:
                        calls[callee] += int(parts[1])
                    after_calls = False
                else:
                    own[fn] += int(parts[1])
    return own, calls


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "chat"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    gateway = os.path.join(PROF, "chatgpt-gateway")
    out = os.path.join(bench.WORK, "callgrind.out")
    wrapper = os.path.join(bench.WORK, "gateway-under-callgrind")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s %s \"$@\"\n" % (out, gateway))
    os.chmod(wrapper, 0o755)
    bench.GATEWAY = wrapper
    bench.HELPER = os.path.join(PROF, "examples", "mock_upstream")
    try:
        helper = bench.free_port()
        bench.start([bench.HELPER, str(helper)])
        bench.wait_port(helper)
        ports, gw, _ = bench.llm_setup(helper)
        if mode == "sse":
            body = os.path.join(bench.WORK, "sse.json")
            with open(body, "w") as f:
                f.write('{"model":"gpt-4o-mini","stream":true,"max_tokens":256,'
                        '"messages":[{"role":"user","content":"Count to a hundred."}]}')
            script = bench.post_script("sse", body)
            path, per = "/v1/chat/completions?n=%d&gap_ms=0" % bench.SSE_EVENTS, bench.SSE_EVENTS
        else:
            script = bench.post_script("chat", bench.chat_body("chat-3k", 3 << 10))
            path, per = "/v1/chat/completions", 1
        bench.wrk(ports["gateway"], 4, 2, path, script, bench.LIMITED)
        subprocess.run(["callgrind_control", "-z", str(gw.pid)], check=True, capture_output=True)
        run = bench.wrk(ports["gateway"], 1, seconds, path, script, bench.LIMITED)
        subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, capture_output=True)
    finally:
        for proc in bench.PROCS:
            proc.terminate()
        for proc in bench.PROCS:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    own, calls = parse(out + ".1")
    if os.environ.get("PROFILE_KEEP"):
        # For callgrind_annotate (e.g. --tree=caller, or a file's lines).
        shutil.copy(out + ".1", os.environ["PROFILE_KEEP"])
    n = run["requests"] * per
    unit = "event" if mode == "sse" else "request"
    total = sum(own.values())
    print("%s: %d requests; %d instructions per %s (every thread)\n" % (mode, run["requests"], total // n, unit))
    print("By themselves:")
    for name, cost in own.most_common(int(os.environ.get("PROFILE_TOP", "25"))):
        print("  %7d  %4.1f%%  %s" % (cost // n, 100 * cost / total, name[:110]))
    print("\nPhases, inclusive:")
    for label, name in PHASES:
        cost = sum(c for callee, c in calls.items() if callee == name)
        if cost:
            print("  %7d  %4.1f%%  %s" % (cost // n, 100 * cost / total, label))


if __name__ == "__main__":
    main()
