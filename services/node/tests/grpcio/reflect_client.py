#!/usr/bin/env python3
"""A third-party gRPC client against a running node, knowing nothing of Aisle but its address.

Python grpcio discovers the services by server reflection — v1alpha, the protocol grpcio-reflection's
ProtoReflectionDescriptorDatabase speaks (as do Postman and older grpcurl) — builds every request message from the
descriptors it discovered (no generated stubs), and calls `aisle.v1.DecisionService/Decide`,
`aisle.v1.DecisionService/Track` and `grpc.health.v1.Health/Check`, checking each answer. Run by the node's test
`grpc_clients` against a node it starts; against any node by hand:

    python3 services/node/tests/grpcio/reflect_client.py 127.0.0.1:50051

It runs in a venv under .aisle/ with pinned packages (requirements.txt beside this file), created on first use.
Each check prints one line; the last line counts them. Exit code 0 when every check passed, 1 when one failed,
2 when the venv could not be set up (pip needs to reach PyPI once).
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the work tree

import fcntl
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
VENV = os.path.join(ROOT, ".aisle", "grpc-venv")
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
# How long one call may take, seconds.
TIMEOUT = 10.0


def ensure_venv() -> None:
    """Re-runs this script inside the venv, creating it (pinned packages) when missing or outdated."""
    if os.environ.get("AISLE_GRPC_VENV") == "1":
        return
    py = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, ".requirements")
    with open(REQUIREMENTS) as f:
        wanted = f.read()
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    # Two runs at once (parallel tests) set the venv up once: the second waits for the first.
    with open(VENV + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = open(stamp).read() if os.path.exists(stamp) else None
        if have != wanted:
            print(f"setting up {os.path.relpath(VENV, ROOT)} (grpcio, grpcio-reflection, protobuf; pinned)",
                  flush=True)
            shutil.rmtree(VENV, ignore_errors=True)
            base = getattr(sys, "_base_executable", None) or sys.executable
            steps = [
                ([base, "-m", "venv", VENV], "python3 -m venv failed (Debian: apt-get install python3-venv, "
                                              "which scripts/deps.sh does)"),
                ([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS],
                 "pip could not install the pinned packages (it needs to reach PyPI once)"),
            ]
            for cmd, why in steps:
                r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if r.returncode != 0:
                    print(f"cannot set up {VENV}: {why}; `{' '.join(cmd)}` said:\n{r.stdout}", file=sys.stderr)
                    shutil.rmtree(VENV, ignore_errors=True)
                    sys.exit(2)
            with open(stamp, "w") as f:
                f.write(wanted)
    env = dict(os.environ, AISLE_GRPC_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


class Checks:
    """Counts checks; a failed one is reported and the run goes on where it can."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok: {what}", flush=True)

    def fail(self, what: str) -> None:
        self.failed += 1
        print(f"FAILED: {what}", flush=True)

    def expect(self, cond: bool, what: str) -> bool:
        (self.ok if cond else self.fail)(what)
        return cond


def enum_name(message, field: str) -> str:
    """The name of an enum field's value, read from the message's (discovered) descriptor."""
    value = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(getattr(message, field))
    return value.name if value is not None else str(getattr(message, field))


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        print("usage: reflect_client.py HOST:PORT", file=sys.stderr)
        return 2
    target = sys.argv[1]

    import grpc
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    checks = Checks()
    # Loopback: no proxy, whatever the environment says.
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    except grpc.FutureTimeoutError:
        print(f"FAILED: no connection to {target} within {TIMEOUT:.0f} s", flush=True)
        return 1

    # Discovery: v1alpha reflection only.
    db = ProtoReflectionDescriptorDatabase(channel)
    try:
        services = sorted(db.get_services())
    except grpc.RpcError as e:
        checks.fail(f"reflection v1alpha ListServices: {e.code().name}: {e.details()}")
        print(f"grpcio: {checks.passed} passed, {checks.failed} failed", flush=True)
        return 1
    wanted = ["aisle.v1.AdminService", "aisle.v1.AssociateService", "aisle.v1.DecisionService",
              "grpc.health.v1.Health"]
    missing = [s for s in wanted if s not in services]
    checks.expect(not missing, f"reflection v1alpha lists {len(services)} services: {', '.join(services)}"
                  + (f" (missing: {', '.join(missing)})" if missing else ""))
    pool = descriptor_pool.DescriptorPool(db)

    def method(service: str, name: str):
        """A callable for `service/name` whose request and response classes come from the discovered descriptors."""
        m = pool.FindServiceByName(service).methods_by_name[name]
        request = message_factory.GetMessageClass(m.input_type)
        response = message_factory.GetMessageClass(m.output_type)
        call = channel.unary_unary(f"/{service}/{name}", request_serializer=request.SerializeToString,
                                   response_deserializer=response.FromString)
        return request, lambda msg: call(msg, timeout=TIMEOUT)

    decide_req, decide = method("aisle.v1.DecisionService", "Decide")
    track_req, track = method("aisle.v1.DecisionService", "Track")
    health_req, check = method("grpc.health.v1.Health", "Check")
    checks.ok(f"descriptors resolved: {decide_req.DESCRIPTOR.full_name} ({len(decide_req.DESCRIPTOR.fields)} fields), "
              f"{track_req.DESCRIPTOR.full_name}, {health_req.DESCRIPTOR.full_name}")

    shopper = "grpcio-shopper-1"
    # Requests built from the discovered descriptors, in protobuf's JSON mapping (enum values by name).
    request = json_format.ParseDict({
        "shopperId": shopper, "surface": "SURFACE_HOME", "channel": "CHANNEL_WEB", "consent": True, "limit": 5,
        "requestId": "grpcio-decide-1",
    }, decide_req())
    r = decide(request)
    tier = enum_name(r, "fallback_tier")
    items = [i.item_id for i in r.items]
    checks.expect(len(items) == 5 and all(items) and [i.rank for i in r.items] == [1, 2, 3, 4, 5],
                  f"Decide: {len(items)} items ranked 1..{len(items)} ({', '.join(items)})")
    checks.expect(tier in ("FALLBACK_TIER_FRESH", "FALLBACK_TIER_CACHED", "FALLBACK_TIER_RULES",
                           "FALLBACK_TIER_GENERIC"), f"Decide: fallback tier {tier}")
    checks.expect(r.request_id == "grpcio-decide-1" and r.served_by != "" and r.decision_id != "",
                  f"Decide: request id echoed, decision {r.decision_id} served by {r.served_by}, "
                  f"model {r.model_version}")

    events = [{"shopperId": shopper, "type": "EVENT_TYPE_VIEW", "itemId": item} for item in items[:3]]
    events.append({"shopperId": shopper, "type": "EVENT_TYPE_ADD_TO_CART", "itemId": items[0], "quantity": 2})
    r = track(json_format.ParseDict({"events": events, "requestId": "grpcio-track-1"}, track_req()))
    checks.expect(r.accepted == len(events) and r.unknown_items == 0,
                  f"Track: accepted {r.accepted} of {len(events)} events, {r.unknown_items} unknown items")

    # The session now has a cart: a cart decision for the same shopper still answers, with the cart's item on screen.
    r = decide(json_format.ParseDict({
        "shopperId": shopper, "surface": "SURFACE_CART", "channel": "CHANNEL_APP", "consent": True,
        "contextItemIds": [items[0]],
    }, decide_req()))
    checks.expect(len(r.items) > 0, f"Decide after Track: {len(r.items)} items on the cart, "
                                    f"tier {enum_name(r, 'fallback_tier')}")

    bad = json_format.ParseDict({"events": [{"shopperId": shopper, "type": "EVENT_TYPE_VIEW", "itemId": items[0]},
                                            {"type": "EVENT_TYPE_VIEW", "itemId": items[0]}]}, track_req())
    try:
        track(bad)
        checks.fail("Track of an invalid batch was accepted")
    except grpc.RpcError as e:
        checks.expect(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "events[1].shopper_id" in (e.details() or ""),
                      f"Track of an invalid batch: {e.code().name}: {e.details()}")

    for service in ["", "aisle.v1.DecisionService"]:
        r = check(json_format.ParseDict({"service": service}, health_req()))
        status = enum_name(r, "status")
        checks.expect(status == "SERVING", f"Health/Check {service or '(server)'}: {status}")

    channel.close()
    print(f"grpcio: {checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    ensure_venv()
    sys.exit(main())
