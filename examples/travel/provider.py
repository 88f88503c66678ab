#!/usr/bin/env python3
"""A travel provider (flights, hotels or cars) as a dtx participant service.

Standard library only. It implements the HTTP contract of docs/participants.md, so a dtx
data node started with `dtx node --participant http://127.0.0.1:PORT` makes its
reservations part of dtx transactions:

  POST /dtx/prepare   {"txn": "t1.2", "operations": [{"kind": "call", "target": "flights/LH400",
                       "action": "reserve", "args": {"item": "LH400", "trip": "trip-7"}}]}
                      -> 200 {"vote": "prepared"}: one unit of each item is held
                      -> 409 {"vote": "aborted", "reason": "no seats left on LH400"}
  POST /dtx/commit    {"txn": "t1.2"} -> 200: the held units are sold
  POST /dtx/rollback  {"txn": "t1.2"} -> 200: the held units are released (an unknown id
                       is remembered, so that a late prepare of it is refused)
  GET  /dtx/prepared  -> {"prepared": ["t1.2", ...]}
  GET  /dtx/state     -> inventory, held and sold units, for audits

Every state change is written to --state (write a temporary file, fsync, rename, fsync the
directory) before the answer, so a 2xx survives kill -9. Everything is idempotent by
transaction id and runs under one lock.

  python3 provider.py --kind flights --port 8101 --state flights.json \\
      --inventory 'LH400=3,LH401=2'

--port 0 picks a free port; the first line on stdout is always `listening on http://HOST:PORT`.

--break MODE runs a deliberately broken provider, to see `dtx participant check` catch it:
  forget-rollback  a rollback of an unknown id is not remembered: a late prepare holds a unit
  not-durable      held reservations are kept only in memory: a restart loses them
  double-prepare   a repeated prepare reserves a second unit (and lists the id twice)
"""

import argparse
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Largest request body read (bytes); larger requests are refused with 413.
REQUEST_BODY_MAX_BYTES = 1024 * 1024

TXN_ID = re.compile(r"^t[0-9]{1,20}\.[0-9]{1,20}$")

UNIT_WORDS = {
    "flights": ("seats", "on"),
    "hotels": ("rooms", "at"),
    "cars": ("cars", "at"),
}

BREAK_MODES = ("forget-rollback", "not-durable", "double-prepare")


class Refusal(Exception):
    """A prepare the provider refuses: answered 409 with the reason."""


class Provider:
    """The provider's state and its transitions, all under one lock.

    holds: one record per accepted prepare, {"txn", "reservations": [{"item", "trip"}]}
           (a list, not a map, so that the double-prepare break shows as a duplicate);
    sold: txn -> reservations; rolled_back: ids rolled back (known or not).
    """

    def __init__(self, kind, state_path, inventory, broken):
        self.kind = kind
        self.state_path = state_path
        self.broken = broken
        self.lock = threading.Lock()
        self.inventory = dict(inventory)
        self.holds = []
        self.sold = {}
        self.rolled_back = set()
        self.load()

    # --- durability -----------------------------------------------------------------

    def load(self):
        try:
            with open(self.state_path, "r", encoding="utf-8") as file:
                state = json.load(file)
        except FileNotFoundError:
            self.persist()
            return
        self.inventory = state["inventory"]
        self.holds = state.get("holds", [])
        self.sold = state["sold"]
        self.rolled_back = set(state["rolled_back"])

    def persist(self):
        """Write the whole state durably: temporary file, fsync, rename, fsync the dir."""
        state = {
            "kind": self.kind,
            "inventory": self.inventory,
            "sold": self.sold,
            "rolled_back": sorted(self.rolled_back),
        }
        if self.broken != "not-durable":
            state["holds"] = self.holds
        directory = os.path.dirname(os.path.abspath(self.state_path))
        temporary = self.state_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temporary, self.state_path)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # --- the contract ---------------------------------------------------------------

    def held_by(self, txn):
        return [hold for hold in self.holds if hold["txn"] == txn]

    def units_taken(self, item):
        taken = 0
        for hold in self.holds:
            taken += sum(1 for unit in hold["reservations"] if unit["item"] == item)
        for reservations in self.sold.values():
            taken += sum(1 for unit in reservations if unit["item"] == item)
        return taken

    def reservations_of(self, operations):
        """The units `operations` ask for, or a Refusal saying why not."""
        if not isinstance(operations, list):
            raise Refusal("operations must be a list")
        reservations = []
        for operation in operations:
            if not isinstance(operation, dict) or operation.get("kind") != "call":
                raise Refusal("this %s provider serves only calls" % self.kind)
            if operation.get("action") != "reserve":
                raise Refusal("unknown action %r (this provider knows: reserve)"
                              % operation.get("action"))
            args = operation.get("args")
            if not isinstance(args, dict):
                args = {}
            item = args.get("item")
            if item is None:
                item = str(operation.get("target", "")).partition("/")[2]
            trip = args.get("trip", "")
            if not isinstance(item, str) or item not in self.inventory:
                raise Refusal("no such item %r at this %s provider" % (item, self.kind))
            reservations.append({"item": item, "trip": str(trip)})
        return reservations

    def prepare(self, txn, operations):
        """(status, body) of a prepare."""
        with self.lock:
            if txn in self.sold:
                return 409, refusal("transaction %s is already committed" % txn)
            if txn in self.rolled_back:
                return 409, refusal("transaction %s is already rolled back" % txn)
            if self.held_by(txn) and self.broken != "double-prepare":
                return 200, {"vote": "prepared"}
            try:
                reservations = self.reservations_of(operations)
                self.check_available(reservations)
            except Refusal as reason:
                return 409, refusal(str(reason))
            self.holds.append({"txn": txn, "reservations": reservations})
            self.persist()
            return 200, {"vote": "prepared"}

    def check_available(self, reservations):
        wanted = {}
        for unit in reservations:
            wanted[unit["item"]] = wanted.get(unit["item"], 0) + 1
        for item, count in sorted(wanted.items()):
            if self.units_taken(item) + count > self.inventory[item]:
                noun, preposition = UNIT_WORDS[self.kind]
                raise Refusal("no %s left %s %s" % (noun, preposition, item))

    def commit(self, txn):
        with self.lock:
            if txn in self.sold:
                return 200, {"committed": txn}
            holds = self.held_by(txn)
            if not holds:
                return 409, {"error": "transaction %s is not prepared here" % txn}
            self.sold[txn] = [unit for hold in holds for unit in hold["reservations"]]
            self.holds = [hold for hold in self.holds if hold["txn"] != txn]
            self.persist()
            return 200, {"committed": txn}

    def rollback(self, txn):
        with self.lock:
            if txn in self.sold:
                return 409, {"error": "transaction %s is already committed" % txn}
            if txn in self.rolled_back:
                return 200, {"rolled_back": txn}
            known = bool(self.held_by(txn))
            if not known and self.broken == "forget-rollback":
                return 200, {"rolled_back": txn}
            self.holds = [hold for hold in self.holds if hold["txn"] != txn]
            self.rolled_back.add(txn)
            self.persist()
            return 200, {"rolled_back": txn}

    def prepared(self):
        with self.lock:
            return 200, {"prepared": [hold["txn"] for hold in self.holds]}

    def state(self):
        with self.lock:
            held = [dict(unit, txn=hold["txn"])
                    for hold in self.holds for unit in hold["reservations"]]
            sold = [dict(unit, txn=txn)
                    for txn, units in sorted(self.sold.items()) for unit in units]
            return 200, {
                "kind": self.kind,
                "inventory": self.inventory,
                "held": held,
                "sold": sold,
                "rolled_back": len(self.rolled_back),
            }


def refusal(reason):
    return {"vote": "aborted", "reason": reason}


def make_handler(provider, verbose):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            if verbose:
                sys.stderr.write("%s %s\n" % (provider.kind, format % args))

        def answer(self, status, body):
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/dtx/prepared":
                self.answer(*provider.prepared())
            elif self.path == "/dtx/state":
                self.answer(*provider.state())
            else:
                self.answer(404, {"error": "no such endpoint"})

        def do_POST(self):
            routes = {
                "/dtx/prepare": self.handle_prepare,
                "/dtx/commit": lambda body, txn: provider.commit(txn),
                "/dtx/rollback": lambda body, txn: provider.rollback(txn),
            }
            route = routes.get(self.path)
            if route is None:
                self.answer(404, {"error": "no such endpoint"})
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.answer(411, {"error": "a body with Content-Length is required"})
                return
            if int(length) > REQUEST_BODY_MAX_BYTES:
                self.answer(413, {"error": "body larger than %d bytes" % REQUEST_BODY_MAX_BYTES})
                self.close_connection = True
                return
            try:
                body = json.loads(self.rfile.read(int(length)))
            except ValueError:
                self.answer(400, {"error": "the body is not JSON"})
                return
            txn = body.get("txn") if isinstance(body, dict) else None
            if not isinstance(txn, str) or not TXN_ID.match(txn):
                self.answer(400, refusal("missing or malformed txn id"))
                return
            self.answer(*route(body, txn))

        def handle_prepare(self, body, txn):
            return provider.prepare(txn, body.get("operations", []))

    return Handler


def parse_inventory(text):
    inventory = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        item, equals, count = part.partition("=")
        if not equals or not item.strip() or not count.strip().isdigit():
            raise argparse.ArgumentTypeError("inventory is ITEM=COUNT,...: %r" % part)
        inventory[item.strip()] = int(count)
    return inventory


def main():
    parser = argparse.ArgumentParser(description="A travel provider as a dtx participant service.")
    parser.add_argument("--kind", choices=sorted(UNIT_WORDS), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--state", required=True, help="the durable state file")
    parser.add_argument("--inventory", type=parse_inventory, default={},
                        help="ITEM=COUNT,... (used when the state file does not exist yet)")
    parser.add_argument("--break", dest="broken", choices=BREAK_MODES,
                        help="run deliberately broken (for testing `dtx participant check`)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    arguments = parser.parse_args()
    provider = Provider(arguments.kind, arguments.state, arguments.inventory, arguments.broken)
    server = ThreadingHTTPServer((arguments.host, arguments.port),
                                 make_handler(provider, arguments.verbose))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print("listening on http://%s:%d" % (host, port), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
