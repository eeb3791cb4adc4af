"""STUN Binding load: how many responses per second the server's UDP ports give.

    python -m bench.stunload --host 127.0.0.1 --ports 8788,8789 \
        [--sources 4096] [--rates 10000,20000,30000,40000] [--step-seconds 5]

Open loop, in steps: for each offered rate, requests go out at that rate,
spread over ``--sources`` UDP sockets, each bound to its own loopback
address (127.251.x.y), so each source stays far below the server's
per-address STUN limit (20/s) the way thousands of real nodes would. Every
answer is matched to its request by transaction id; a request unanswered
after a second is lost. Per step: offered and answered per second, loss,
and this process's own CPU (when it nears 100 % the step measured the
client, not the server; the report says so).

Requests are built by ``wire.stun.encode_binding_request``; every answer's
type and transaction id are checked, and one in ``--check-every`` is parsed
by ``wire.stun.parse_message`` and its XOR-MAPPED-ADDRESS compared with the
socket's own address.

Prints JSON lines on stdout: ``{"event": "step_start", "rate": R}`` as each
counted window opens, ``{"event": "step", ...}`` as it closes, and at the
end ``{"event": "result", "steps": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.protocol import DatagramProtocol  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402

from wire.stun import XOR_MAPPED_ADDRESS, encode_binding_request, parse_mapped_address, parse_message  # noqa: E402

BINDING_SUCCESS = b"\x01\x01"
LOST_AFTER = 1.0
TICK = 0.004


def udp_drops(server_ports: set[int]) -> tuple[int, int]:
    """Datagrams the kernel dropped (full receive buffer), from /proc/net/udp:
    (on the server's ports, on our 127.251.x.y sources). Tells a server that
    fell behind from a client that did."""
    server = client = 0
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                fields = line.split()
                address, port = fields[1].split(":")
                drops = int(fields[-1])
                if int(port, 16) in server_ports:
                    server += drops
                elif address.endswith("FB7F"):  # 127.251.x.y, little-endian hex
                    client += drops
    except (OSError, ValueError, IndexError, StopIteration):
        return -1, -1
    return server, client


def source_address(i: int) -> str:
    n = i + 1
    return f"127.251.{(n >> 8) & 255}.{n & 255}"


class Counts:
    def __init__(self) -> None:
        self.sent = 0
        self.answered = 0
        self.unexpected = 0
        self.checked = 0
        self.check_failures: list[str] = []
        self.outstanding: dict[bytes, float] = {}
        self.serial = 0


class Source(DatagramProtocol):
    def __init__(self, target: tuple[str, int], counts: Counts, check_every: int, address: str):
        self.target = target
        self.counts = counts
        self.check_every = check_every
        self.address = address

    def startProtocol(self) -> None:
        self.own_port = self.transport.getHost().port

    def send(self) -> None:
        counts = self.counts
        counts.serial += 1
        request, transaction_id = encode_binding_request(struct.pack("!IQ", 0x77697265, counts.serial))
        counts.outstanding[transaction_id] = time.monotonic()
        counts.sent += 1
        self.transport.write(request, self.target)

    def datagramReceived(self, data: bytes, addr) -> None:
        counts = self.counts
        if data[:2] != BINDING_SUCCESS or counts.outstanding.pop(data[8:20], None) is None:
            counts.unexpected += 1
            return
        counts.answered += 1
        if counts.answered % self.check_every == 0:
            self._check(data)

    def _check(self, data: bytes) -> None:
        counts = self.counts
        counts.checked += 1
        try:
            message = parse_message(data)
            if message.get(XOR_MAPPED_ADDRESS) is None:
                raise ValueError("no XOR-MAPPED-ADDRESS")
            mapped = parse_mapped_address(message)
            if (mapped.ip, mapped.port) != (self.address, self.own_port):
                raise ValueError(f"mapped {mapped}, expected {self.address}:{self.own_port}")
        except Exception as e:
            if len(counts.check_failures) < 5:
                counts.check_failures.append(str(e))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", required=True, help="comma-separated UDP ports")
    parser.add_argument("--sources", type=int, default=4096)
    parser.add_argument("--rates", default="10000,20000,25000,30000,35000,40000", help="offered requests/s, one step each")
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--check-every", type=int, default=64)
    options = parser.parse_args()
    rates = [int(r) for r in options.rates.split(",") if r]
    if not (0 < options.step_seconds <= 120 and 1 <= options.sources <= 16000 and rates and len(rates) <= 20):
        sys.exit("--step-seconds in (0, 120], --sources in 1..16000, 1 to 20 rates")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    ports = [int(p) for p in options.ports.split(",")]
    counts = Counts()
    sources = []
    for i in range(options.sources):
        address = source_address(i)
        source = Source((options.host, ports[i % len(ports)]), counts, options.check_every, address)
        reactor.listenUDP(0, source, interface=address)
        sources.append(source)

    def emit(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    steps: list[dict] = []
    state = {"step": -1, "rate": 0, "started": 0.0, "sent_at_start": 0, "next": 0}

    def tick() -> None:
        if state["rate"] <= 0:
            return
        due = int(state["rate"] * (time.monotonic() - state["started"])) - (counts.sent - state["sent_at_start"])
        # Bounded: never more than a quarter second's worth in one tick.
        for _ in range(min(due, state["rate"] // 4 + 1)):
            sources[state["next"]].send()
            state["next"] = (state["next"] + 1) % len(sources)

    def expire() -> None:
        old = time.monotonic() - LOST_AFTER
        for transaction_id, sent in list(counts.outstanding.items()):
            if sent < old:
                del counts.outstanding[transaction_id]
                counts.lost = getattr(counts, "lost", 0) + 1

    def start_step(index: int) -> None:
        state.update(step=index, rate=rates[index], started=time.monotonic(), sent_at_start=counts.sent)
        state["answered_at_start"] = counts.answered
        state["lost_at_start"] = getattr(counts, "lost", 0)
        state["cpu"] = _own_cpu()
        state["drops"] = udp_drops(set(ports))
        emit({"event": "step_start", "rate": rates[index]})
        reactor.callLater(options.step_seconds, end_step, index)

    def end_step(index: int) -> None:
        elapsed = time.monotonic() - state["started"]
        sent = counts.sent - state["sent_at_start"]
        answered = counts.answered - state["answered_at_start"]
        cpu = _own_cpu() - state["cpu"]
        state["rate"] = 0

        def settle() -> None:
            expire()
            lost = getattr(counts, "lost", 0) - state["lost_at_start"]
            drops = udp_drops(set(ports))
            step = {
                "offered_per_second": rates[index],
                "sent_per_second": round(sent / elapsed, 1),
                "answered_per_second": round(answered / elapsed, 1),
                "lost": lost,
                "lost_percent": round(100 * lost / sent, 3) if sent else None,
                "load_cpu_percent": round(100 * cpu / elapsed, 1),
                "dropped_by_server_socket": drops[0] - state["drops"][0] if drops[0] >= 0 else None,
                "dropped_by_client_sockets": drops[1] - state["drops"][1] if drops[1] >= 0 else None,
            }
            steps.append(step)
            emit({"event": "step", **step})
            if index + 1 < len(rates):
                start_step(index + 1)
            else:
                emit(
                    {
                        "event": "result",
                        "steps": steps,
                        "sources": options.sources,
                        "ports": ports,
                        "step_seconds": options.step_seconds,
                        "unexpected": counts.unexpected,
                        "fully_checked": counts.checked,
                        "check_failures": counts.check_failures,
                    }
                )
                reactor.stop()

        # Answers still in flight belong to this step: let them land first.
        reactor.callLater(LOST_AFTER + 0.2, settle)

    LoopingCall(tick).start(TICK, now=False)
    LoopingCall(expire).start(0.5, now=False)
    reactor.callLater(0.5, start_step, 0)
    reactor.run()


if __name__ == "__main__":
    main()
