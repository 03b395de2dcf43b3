"""The crash campaign behind tests/crash/run.sh: see that script for what it checks."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

STAFF, ALICE = "staff-token", "alice-token"
INITIAL_STOCK = 100_000


def call(base, method, path, token=None, body=None, timeout=5):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Shop:
    def __init__(self, binary, database, log):
        self.process = subprocess.Popen(
            [binary, "--port", "0", "--database", database],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        line = self.process.stdout.readline()
        if "listening on http://" not in line:
            raise SystemExit(f"the shop did not start: {line!r}")
        self.base = "http://" + line.split("http://")[1].split()[0]

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


class Store:
    """SQL access to the shop's database, for the checks."""

    def __init__(self, kind, target):
        self.kind, self.target = kind, target

    def rows(self, sql):
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as db:
                return db.execute(sql).fetchall()
        url, schema = self.target
        out = subprocess.run(
            ["psql", url, "-At", "-F", "\t", "-c", sql],
            env={**os.environ, "PGOPTIONS": f"-c search_path={schema}"},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [tuple(line.split("\t")) for line in out.splitlines() if line]


def load(shop, product, stop, placed, lock):
    while not stop.is_set():
        quantity = random.randint(1, 3)
        try:
            status, body = call(
                shop.base, "POST", "/orders", ALICE, {"product_id": product, "quantity": quantity}
            )
        except Exception:  # the shop was killed mid-request: no answer, no promise
            continue
        if status == 201:
            with lock:
                placed.append(body["order_id"])


def campaign(kind, rounds, binary):
    workdir = tempfile.mkdtemp(prefix=f"cqrs-crash-{kind}-")
    log = open(os.path.join(workdir, "shop.log"), "w")
    if kind == "sqlite":
        path = os.path.join(workdir, "shop.db")
        database, store, cleanup = path, Store("sqlite", path), lambda: None
    else:
        base = os.environ.get("CQRS_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
        schema = "crash_" + uuid.uuid4().hex[:12]
        subprocess.run(["psql", base, "-qc", f"CREATE SCHEMA {schema}"], check=True)
        database = f"{base}?options=-c%20search_path%3D{schema}"
        store = Store("postgres", (base, schema))
        cleanup = lambda: subprocess.run(
            ["psql", base, "-qc", f"DROP SCHEMA {schema} CASCADE"], check=True, capture_output=True
        )
    try:
        shop = Shop(binary, database, log)
        status, body = call(
            shop.base,
            "POST",
            "/products",
            STAFF,
            {"name": "Crash test tea", "price_cents": 100, "stock": INITIAL_STOCK},
        )
        assert status == 201, body
        product = body["id"]
        placed, lock = [], threading.Lock()
        for round_ in range(rounds):
            if round_ > 0:
                shop = Shop(binary, database, log)
            stop = threading.Event()
            workers = [
                threading.Thread(target=load, args=(shop, product, stop, placed, lock))
                for _ in range(6)
            ]
            for worker in workers:
                worker.start()
            time.sleep(random.uniform(0.2, 1.5))
            shop.kill()
            stop.set()
            for worker in workers:
                worker.join()
        shop = Shop(binary, database, log)
        # Every 201 is readable, once the relay has delivered what the kills left pending (rows
        # a killed dispatch had claimed wait for its lease, 30 s, to run out).
        pending_sql = "SELECT COUNT(*) FROM cqrs_outbox WHERE delivered_at_ms IS NULL"
        deadline = time.time() + 120
        unread = list(placed)
        while time.time() < deadline:
            unread = [o for o in unread if call(shop.base, "GET", f"/orders/{o}", ALICE)[0] != 200]
            if not unread and int(store.rows(pending_sql)[0][0]) == 0:
                break
            time.sleep(0.5)
        events = store.rows(
            "SELECT aggregate_id, payload FROM cqrs_events WHERE aggregate_type = 'order'"
        )
        orders = {}
        for aggregate_id, payload in events:
            event = json.loads(payload)
            if "Placed" in event and event["Placed"]["product_id"] == product:
                orders[aggregate_id] = event["Placed"]["quantity"]
        stock = int(store.rows(f"SELECT stock FROM products WHERE id = {product}")[0][0])
        projected = {
            row[0]
            for row in store.rows(
                f"SELECT order_id FROM order_summaries WHERE product_id = {product}"
            )
        }
        pending = int(store.rows(pending_sql)[0][0])
        shop.stop()
        sold = sum(orders.values())
        report = {
            "database": kind,
            "kills": rounds,
            "orders answered 201": len(placed),
            "orders in the event store": len(orders),
            "201s not readable": len(unread),
            "201s missing from the event store": len(set(placed) - set(orders)),
            "stock + sold": stock + sold,
            "initial stock": INITIAL_STOCK,
            "orders missing from the projection": len(set(orders) - projected),
            "projected orders the store lacks": len(projected - set(orders)),
            "outbox rows pending": pending,
        }
        ok = (
            not unread
            and set(placed) <= set(orders)
            and stock + sold == INITIAL_STOCK
            and projected == set(orders)
            and pending == 0
        )
        return ok, report
    finally:
        log.close()
        cleanup()


def main():
    rounds, which, binary = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    kinds = ["sqlite", "postgres"] if which == "both" else [which]
    all_ok = True
    for kind in kinds:
        ok, report = campaign(kind, rounds, binary)
        all_ok &= ok
        print(("PASS " if ok else "FAIL ") + json.dumps(report))
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
